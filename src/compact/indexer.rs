//! The indexer (DESIGN section 11): turns each partition's segments above
//! its watermark into index shards.
//!
//! One round, under the indexer lease in the index manifest (renewed
//! while the round works, released when it ends: [`super::lease`]; an
//! efficiency device, the compare-and-swap in step 6 is what keeps two
//! racing indexers correct):
//! 1. read the index manifest (generation `g`, watermarks `W`);
//! 2. per partition, read its manifest and take its tail, the segments
//!    with seq > `W[p]`; the new watermark is the tail's last seq;
//! 3. resolve the tails (newest version of each id wins, tombstones kept);
//! 4. mark dead, in new deletion vectors, every live shard row whose id
//!    the tails hold (a newer version or a delete);
//! 5. write the new shard(s) from the tails' live records (the segment
//!    format, with the configured ANN index) and the deletion vectors,
//!    create-only under fresh keys;
//! 6. commit the index manifest by compare-and-swap ([`record_round`])
//!    if its generation is still `g` (else another indexer won: this
//!    round's objects become orphans for GC): new watermarks, new shards,
//!    new deletion vectors, replaced ones to `retired`.
//!
//! 7. only then retire the covered segments from the partition manifests
//!    (recording `indexedThrough`), so a reader that sees a segment gone
//!    from a partition finds its records in an index manifest at least as
//!    new. A round that stops between 6 and 7 leaves the retirement to
//!    whoever comes next: retiring through a committed watermark is
//!    idempotent and needs no lease, so the next round finishes it first,
//!    and so does any partition compaction that finds segments at or
//!    below `W[p]` ([`super::retire_covered`]).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use serde::Serialize;

use super::lease::with_lease;
use super::{build_outputs, newest_records, retire_covered, routed, CompactError};
use crate::coord::cas::{put_new_object, Backoff};
use crate::coord::clock::{format_time, unix_millis, DynClock};
use crate::coord::index_manifest::{
    read_index_manifest, record_round, replace_merged, IndexManifest, LeaseHeld, MergeCommit,
    NewDeletions, RoundCommit, RoutingEntry, ShardEntry,
};
use crate::coord::manifest::load_manifest;
use crate::coord::paths::{new_deletions_key, new_shard_key};
use crate::coord::{CoordError, Settings};
use crate::index::shard::routed::{group_by_cluster, KnownCodes};
use crate::record::Prepared;
use crate::text::TextFields;
use crate::segment::deletions::DeletionVector;
use crate::segment::{self, SegmentHeader, Shape, FORMAT_VERSION};
use crate::store::ObjectStore;

/// A round indexes once the tails hold this many records...
pub const INDEX_MIN_RECORDS: u64 = 10_000;
/// ...or their oldest segment is this old.
pub const INDEX_MAX_LAG: Duration = Duration::from_secs(60);

/// Shards of one level are merged into the next once there are this many.
pub const MERGE_FANIN: usize = 4;
/// A shard holds at most this many rows...
pub const SHARD_TARGET_ROWS: u64 = 1_000_000;
/// ...and at most about this many bytes.
pub const SHARD_TARGET_BYTES: u64 = 512 << 20;

/// How to run a round.
#[derive(Clone, Copy, Debug, Default)]
pub struct IndexOptions {
    /// Index whatever the tails hold, however little or young.
    pub force: bool,
    /// Take tails until they hold this many records (at least one
    /// partition's), starting at a partition that moves with every
    /// commit; the other partitions wait for the next round. `None`:
    /// every tail. For a compactor whose rounds must fit an invocation.
    pub max_rows: Option<u64>,
    /// Build shards of the older format (each with its own IVF, DESIGN
    /// section 11) instead of routed shards (section 12), and leave
    /// shards where they are: only for tests of the move from that
    /// layout to one routing.
    #[doc(hidden)]
    pub legacy: bool,
    /// Train a new routing this round even when the current one fits
    /// (unless shards still move to it): only for tests that move shards
    /// between routings often.
    #[doc(hidden)]
    pub retrain: bool,
    /// The records each round of an unbudgeted call takes ([`ROUND_ROWS`]
    /// when `None`): only for tests of rounds that split.
    #[doc(hidden)]
    pub round_rows: Option<u64>,
}

/// Records one indexing round takes from the tails when it is given no
/// budget (`IndexOptions::max_rows`): a forced or scheduled round over
/// more runs as several, so what the indexer holds (the round's rows,
/// then its shards' bytes) stays bounded however long the tails grow.
/// About 300 MB of 384-d rows.
pub const ROUND_ROWS: u64 = 200_000;

/// The most rows a shard of `settings`' vectors holds.
pub fn shard_target_rows(settings: &Settings) -> u64 {
    let row_bytes = u64::from(settings.dimensions) * 4 + 64;
    SHARD_TARGET_ROWS.min(SHARD_TARGET_BYTES / row_bytes).max(1)
}

/// Tail segments a round reads at once from one partition (and
/// partition manifests at once).
const TAIL_READS: usize = 16;
/// Shards whose id indexes a round searches at once for the rows its
/// batch supersedes.
const SHARD_LOOKUPS: usize = 8;

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
    /// Another indexer holds the lease (or took it over while this round
    /// worked, which then stopped).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_held_by: Option<String>,
    /// Another indexer committed first; this round's objects are orphans.
    pub superseded: bool,
    /// Partitions whose indexed segments this round retired.
    pub retired_partitions: u64,
    /// Records waiting in the tails when the round looked.
    pub tail_records: u64,
    /// Shard merges committed: (inputs, output key).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub merged: Vec<Merge>,
    /// Objects this round could not read (corrupt) and worked around
    /// (issue 28 F5): a partition whose manifest or tail segment is
    /// unreadable keeps its tail and watermark; an unreadable shard gets
    /// no new deletions and is not merged; every other partition and
    /// shard is indexed as usual. `shoal verify` names them too.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unreadable: Vec<String>,
}

/// Whether `e` is an object found damaged (worked around, reported),
/// rather than a store that failed (the round stops and is retried).
fn damaged<E: Into<CompactError>>(e: E) -> Result<String, CompactError> {
    let e = e.into();
    if e.kind() == crate::vocab::ErrorKind::Corrupt {
        tracing::error!(error = %e, "the indexer cannot read an object; it works around it (see `shoal verify`)");
        Ok(e.to_string())
    } else {
        Err(e)
    }
}

/// One committed merge of shards.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Merge {
    pub inputs: Vec<String>,
    pub output: String,
    pub level: u32,
    pub rows: u64,
}

/// Runs one indexing round as `holder` (see the module docs), then merges
/// shards where a level has [`MERGE_FANIN`] of them, holding the lease
/// throughout ([`with_lease`]). Unless `opts.force`, it first checks
/// (without the lease: one GET per manifest) that there is work: tails of
/// at least [`INDEX_MIN_RECORDS`] records or older than
/// [`INDEX_MAX_LAG`], an unfinished retirement, or a merge due.
pub async fn index_round(
    store: &dyn ObjectStore,
    settings: &Settings,
    holder: &str,
    clock: &DynClock,
    opts: IndexOptions,
) -> Result<IndexRound, CompactError> {
    let n = settings.partition_count;
    let mut round = IndexRound::default();
    if !opts.force && !work_due(store, settings, clock, routed(settings, opts), &mut round).await? {
        return Ok(round);
    }
    let work = async {
        // A round without a budget takes every tail, as rounds of at most
        // ROUND_ROWS records each, one after the other: the indexer's
        // memory is bounded by a round, not by the tails.
        let rounds = IndexOptions {
            max_rows: Some(opts.max_rows.or(opts.round_rows).unwrap_or(ROUND_ROWS)),
            ..opts
        };
        let mut committed = 0;
        loop {
            let taken = round.records_in;
            run_round(store, settings, clock, rounds, &mut round).await?;
            if round.records_in > taken && !round.superseded {
                committed += 1;
            }
            if opts.max_rows.is_some() || round.records_in == taken || round.superseded {
                break;
            }
        }
        round.unreadable.sort();
        round.unreadable.dedup();
        // Several rounds' shards each hold rows of every cluster: rewrite
        // them as shards of disjoint cluster ranges (as one round's are),
        // so a query's probed clusters sit in few shards.
        if committed > 1 && routed(settings, opts) {
            rewrite_by_cluster_range(store, settings, clock, &mut round).await?;
        }
        merge_shards(store, settings, clock, opts, &mut round).await
    };
    match with_lease(store, n, holder, clock, work).await? {
        Ok(done) => done?,
        Err(LeaseHeld { holder, .. }) => round.lease_held_by = Some(holder),
    }
    Ok(round)
}

/// Whether a round has anything to do (see [`index_round`]).
async fn work_due(
    store: &dyn ObjectStore,
    settings: &Settings,
    clock: &DynClock,
    routed: bool,
    round: &mut IndexRound,
) -> Result<bool, CompactError> {
    let n = settings.partition_count;
    let index = current_index(store, n).await?;
    let text = settings.text_fields();
    if !merges_due(&index, shard_target_rows(settings), routed, &text).is_empty() {
        return Ok(true);
    }
    let now = clock.now();
    let mut due = false;
    for p in 0..n {
        let (m, _) = match load_manifest(store, p, settings.partitions_initialized).await {
            Ok(found) => found,
            Err(e) => {
                damaged(e)?; // reported by the round
                continue;
            }
        };
        let w = index.watermark(p);
        if m.indexed_through < w {
            due = true;
        }
        for e in m.segments.iter().filter(|e| e.seq > w) {
            round.tail_records += e.records;
            let age = crate::coord::clock::parse_time(&e.created_at)
                .and_then(|t| now.duration_since(t).ok())
                .unwrap_or_default();
            due |= age >= INDEX_MAX_LAG;
        }
    }
    Ok(due || round.tail_records >= INDEX_MIN_RECORDS)
}

/// One indexing round under the lease (module docs, steps 1 to 7): take
/// the tails, write the new shards and deletion vectors, commit the index
/// manifest, and only then retire the covered segments.
async fn run_round(
    store: &dyn ObjectStore,
    settings: &Settings,
    clock: &DynClock,
    opts: IndexOptions,
    round: &mut IndexRound,
) -> Result<(), CompactError> {
    let max_rows = opts.max_rows;
    let n = settings.partition_count;
    let shape = shape_of(settings);
    let index = current_index(store, n).await?;
    let backoff = Backoff::default();
    let taken = take_tails(store, settings, clock, &index, max_rows, round).await?;
    let (batch, advanced, pending) = (taken.batch, taken.advanced, taken.pending);
    if advanced.is_empty() {
        return Ok(());
    }
    let deletions = supersede_rows(store, &index, shape, &batch, round).await?;
    // The new shards: the batch's live records.
    let live: Vec<Prepared> = batch.into_iter().filter(|r| !r.tombstone).collect();
    round.rows_out += live.len() as u64;
    let now = clock.now();
    // GC spares unreferenced objects for the grace period: commit within
    // the age bound after the first PUT, or not at all.
    let mut new_routing = None;
    let (new_shards, written_at) = if routed(settings, opts) && !live.is_empty() {
        let rr = routed::routing_for_round(
            store,
            settings,
            clock,
            &index,
            &live,
            pending,
            opts.retrain,
        )
        .await?;
        new_routing = rr.new;
        let r = rr.routing.clone();
        let clusters = crate::cpu::run(move || group_by_cluster(live, &r)).await;
        let cap = shard_target_rows(settings) as usize;
        let text = settings.text_fields();
        routed::write_routed(store, clock, clusters, KnownCodes::new(), rr.routing, 0, cap, &text)
            .await?
    } else {
        write_shards(store, settings, clock, live, 0).await?
    };
    round
        .shards_written
        .extend(new_shards.iter().map(|s| s.key.clone()));
    let new_dvs = write_deletions(store, &index, deletions, now, backoff).await?;
    if crate::mutation::active(crate::mutation::Mutation::RetireBeforeIndexCommit) {
        for (&p, &w) in &advanced {
            retire_covered(store, settings, clock, p, w).await?; // broken on purpose
        }
    }
    let commit = RoundCommit {
        advanced: &advanced,
        shards: &new_shards,
        deletions: &new_dvs,
        routing: new_routing.as_ref(),
    };
    let committed = commit_round(store, settings, clock, &index, commit, written_at, backoff);
    let Some(generation) = committed.await? else {
        round.superseded = true;
        return Ok(());
    };
    round.generation = Some(generation);
    // The index manifest covers them now: retire them from the partitions.
    for (&p, &w) in &advanced {
        round.retired_partitions += retire_covered(store, settings, clock, p, w).await? as u64;
    }
    round.advanced.extend(advanced);
    Ok(())
}

/// Loads each partition's tail and resolves it into the round's batch;
/// returns the batch, each partition's new watermark and the records in
/// every tail (finishing an earlier round's retirement on the way).
async fn take_tails(
    store: &dyn ObjectStore,
    settings: &Settings,
    clock: &DynClock,
    index: &IndexManifest,
    max_rows: Option<u64>,
    round: &mut IndexRound,
) -> Result<Taken, CompactError> {
    let n = settings.partition_count;
    let shape = shape_of(settings);
    // The tails, and where each partition's watermark will move. With a
    // row budget the walk starts where the generation points, so rounds
    // that cannot take every tail still reach every partition in turn.
    let mut batch: Vec<Prepared> = Vec::new();
    let mut advanced = BTreeMap::new();
    // Records this round takes (the budget's count), and records in every
    // tail it saw (what the routing is sized for).
    let (mut taken, mut pending) = (0u64, 0u64);
    let start = if max_rows.is_some() {
        (index.generation % u64::from(n)) as u32
    } else {
        0
    };
    // Every partition's manifest, several GETs in flight.
    let order: Vec<u32> = (0..n).map(|i| (start + i) % n).collect();
    let loads: Vec<_> = order
        .iter()
        .map(|&p| load_manifest(store, p, settings.partitions_initialized))
        .collect();
    let manifests: Vec<_> = futures::stream::iter(loads)
        .buffered(TAIL_READS)
        .collect()
        .await;
    'partitions: for (p, loaded) in order.into_iter().zip(manifests) {
        let (m, _) = match loaded {
            Ok(found) => found,
            Err(e) => {
                round.unreadable.push(damaged(e)?);
                continue;
            }
        };
        let w = index.watermark(p);
        if m.indexed_through < w {
            // An earlier round committed the index manifest and stopped
            // before retiring: finish that first.
            round.retired_partitions += retire_covered(store, settings, clock, p, w).await? as u64;
        }
        let mut tail: Vec<_> = m.segments.iter().filter(|s| s.seq > w).collect();
        pending += tail.iter().map(|e| e.records).sum::<u64>();
        if let Some(max) = max_rows {
            if taken >= max {
                continue; // over the budget: the next round takes it
            }
            // A prefix of the tail (in seq order, at least one segment)
            // up to the budget: the watermark stops on its last segment,
            // and a later round takes the rest (newer versions then
            // supersede this round's rows, as any newer tail does).
            // Compaction outputs share a seq with the segment they
            // ended at, so the prefix takes every segment of its last
            // seq: a watermark covers whole seqs.
            let mut sum = taken;
            if let Some(mut end) = tail.iter().position(|e| {
                sum += e.records;
                sum >= max
            }) {
                let splits = crate::mutation::active(crate::mutation::Mutation::WatermarkSplitsSeq);
                while !splits && tail.get(end + 1).is_some_and(|e| e.seq == tail[end].seq) {
                    end += 1;
                }
                tail.truncate(end + 1);
            }
        }
        let Some(last) = tail.last() else { continue };
        // The tail's segments, several GETs in flight (on S3 each waits
        // out a round trip), taken in seq order.
        let loads: Vec<_> = tail
            .iter()
            .map(|e| segment::load_at(store, &e.key, e.range(), shape))
            .collect();
        let loaded: Vec<_> = futures::stream::iter(loads)
            .buffered(TAIL_READS)
            .collect()
            .await;
        let mut segs = Vec::with_capacity(tail.len());
        for got in loaded {
            match got {
                Ok(seg) => segs.push(Arc::new(seg)),
                Err(err) => {
                    // The partition keeps its tail (and watermark) whole.
                    round.unreadable.push(damaged(err)?);
                    continue 'partitions;
                }
            }
        }
        let records = segs.iter().map(|s| s.len() as u64).sum::<u64>();
        round.records_in += records;
        taken += records;
        let (live, tombstones) = newest_records(&segs);
        batch.extend(live.into_iter().chain(tombstones));
        advanced.insert(p, last.seq);
    }
    Ok(Taken {
        batch,
        advanced,
        pending,
    })
}

/// What [`take_tails`] took.
struct Taken {
    batch: Vec<Prepared>,
    /// Each partition's new watermark.
    advanced: BTreeMap<u32, u64>,
    /// Records in every tail seen, taken or not.
    pending: u64,
}

/// Marks dead every live shard row whose id the batch holds; returns the
/// changed deletion vectors by shard index.
async fn supersede_rows(
    store: &dyn ObjectStore,
    index: &IndexManifest,
    shape: Shape,
    batch: &[Prepared],
    round: &mut IndexRound,
) -> Result<Vec<(usize, DeletionVector)>, CompactError> {
    // Older shard rows the batch supersedes.
    let touched: HashSet<&str> = batch.iter().map(|r| r.id.as_str()).collect();
    let mut deletions: Vec<(usize, DeletionVector)> = Vec::new();
    // Each shard's rows holding a batch id, and the deletion vector of a
    // shard that holds some, several shards at once (on S3 each lookup
    // waits out a round trip or two).
    let touched = &touched;
    let lookups: Vec<_> = index.shards.iter().map(|shard| async move {
        let hits: Vec<(u64, Vec<u32>)> = if shard.routing.is_some() {
            // Through the shard's id index: its head and the blocks that
            // could hold the batch's ids, nothing per row in memory.
            routed::routed_rows_of(store, shard, touched).await?
        } else {
            let ids = shard_ids(store, shard, shape).await?;
            ids.iter()
                .enumerate()
                .filter(|(_, id)| touched.contains(id.as_str()))
                .map(|(row, _)| (row as u64, Vec::new()))
                .collect()
        };
        if hits.is_empty() {
            return Ok(None);
        }
        load_deletions(store, shard).await.map(|dv| Some((hits, dv)))
    }).collect();
    // A shard of the older kind is read whole: one at a time, so the
    // indexer holds at most one.
    let at_once = match index.shards.iter().all(|s| s.routing.is_some()) {
        true => SHARD_LOOKUPS,
        false => 1,
    };
    let found: Vec<Result<_, CompactError>> = futures::stream::iter(lookups)
        .buffered(at_once)
        .collect()
        .await;
    for (i, found) in found.into_iter().enumerate() {
        let (hits, mut dv) = match found {
            Ok(Some(found)) => found,
            Ok(None) => continue,
            Err(e) => {
                // Never served while damaged; a repair must apply newer rows.
                round.unreadable.push(damaged(e)?);
                continue;
            }
        };
        let mut killed = 0;
        for (row, lengths) in hits {
            // A shard with a text index: the vector records what its
            // dead rows held, so BM25's statistics never count them.
            if dv.mark_with_lengths(row, lengths.into_iter()) {
                killed += 1;
            }
        }
        if killed > 0 {
            round.rows_killed += killed;
            deletions.push((i, dv));
        }
    }
    Ok(deletions)
}

/// Writes the changed deletion vectors create-only under fresh keys,
/// several at once.
async fn write_deletions(
    store: &dyn ObjectStore,
    index: &IndexManifest,
    deletions: Vec<(usize, DeletionVector)>,
    now: std::time::SystemTime,
    backoff: Backoff,
) -> Result<Vec<NewDeletions>, CompactError> {
    let writes = deletions.into_iter().map(|(i, dv)| async move {
        let key = new_deletions_key(now);
        put_new_object(store, &key, dv.encode(), backoff).await?;
        Ok::<_, CompactError>(NewDeletions {
            shard: index.shards[i].key.clone(),
            key,
            dead: dv.dead(),
        })
    });
    futures::stream::iter(writes)
        .buffered(SHARD_LOOKUPS)
        .try_collect()
        .await
}

/// Commits the round to the index manifest; the new generation, or `None`
/// when another indexer committed since `index` was read (or it is too late).
async fn commit_round(
    store: &dyn ObjectStore,
    settings: &Settings,
    clock: &DynClock,
    index: &IndexManifest,
    commit: RoundCommit<'_>,
    written_at: std::time::SystemTime,
    backoff: Backoff,
) -> Result<Option<u64>, CompactError> {
    // Commit, if nobody else did since we read the index manifest.
    let retired_at = format_time(crate::coord::skew::store_now(store, clock.as_ref()).await?);
    let (expected, late) = (index.generation, || too_late(clock, written_at, settings));
    let n = settings.partition_count;
    let committed = record_round(store, n, backoff, expected, late, commit, &retired_at);
    Ok(committed.await?.map(|m| m.generation))
}

/// The index settings shards are built with: the config's, with shards
/// as large as [`shard_target_rows`].
/// Whether rounds build routed shards (DESIGN section 12): with the
/// default IVF index kind. HNSW (for warm-only deployments) and no index
/// keep shards in the segment format, read whole.
fn routed(settings: &Settings, opts: IndexOptions) -> bool {
    !opts.legacy && settings.index().kind == crate::vocab::AnnKind::Ivf
}

fn shard_index_settings(settings: &Settings) -> crate::vocab::IndexSettings {
    let mut ix = settings.index();
    ix.max_segment_records = shard_target_rows(settings);
    ix
}

/// Per level, the oldest [`MERGE_FANIN`] shards when a level has that
/// many; shards that are already full (or would make a merge overfull)
/// stay out.
fn merges_due(
    index: &IndexManifest,
    target_rows: u64,
    routed: bool,
    text: &TextFields,
) -> Vec<Vec<ShardEntry>> {
    let mut due = Vec::new();
    let current = index.current_routing().map(|r| r.generation);
    let rebuilt = |s: &ShardEntry| s.routing != current || !s.indexes_text(text);
    if routed && current.is_some() {
        // Shards of another routing (or with their own IVF), and shards
        // without a text index of every searchable key (a backfill), are
        // rebuilt under the current routing, one per commit (a piece
        // that fits an invocation), before anything else merges.
        let stray = index.shards.iter().filter(|s| rebuilt(s));
        due.extend(stray.map(|s| vec![s.clone()]));
    }
    // Shards merge with shards of their own routing and level.
    let mut levels: BTreeMap<(Option<u64>, u32), Vec<&ShardEntry>> = BTreeMap::new();
    for s in &index.shards {
        if s.rows - s.dead.min(s.rows) < target_rows && (!routed || !rebuilt(s)) {
            levels.entry((s.routing, s.level)).or_default().push(s);
        }
    }
    for (_, shards) in levels {
        for group in shards.chunks_exact(MERGE_FANIN) {
            let live: u64 = group.iter().map(|s| s.rows - s.dead.min(s.rows)).sum();
            if live <= target_rows {
                due.push(group.iter().map(|s| (*s).clone()).collect());
            }
        }
    }
    due
}

/// Merges the shards [`merges_due`] names, one commit per merge: a new
/// shard of their live rows at the next level replaces them (and their
/// deletion vectors go to `retired`). A merge whose inputs changed
/// meanwhile is given up (its output is an orphan for GC).
async fn merge_shards(
    store: &dyn ObjectStore,
    settings: &Settings,
    clock: &DynClock,
    opts: IndexOptions,
    round: &mut IndexRound,
) -> Result<(), CompactError> {
    let n = settings.partition_count;
    let shape = shape_of(settings);
    let target = shard_target_rows(settings);
    let routed = routed(settings, opts);
    // Rows routed merges have rewritten: with a row budget (a compactor
    // invocation), a round stops once it has spent it, and the next
    // round goes on (a routing migration rewrites every shard).
    let mut rewritten = 0u64;
    loop {
        if opts.max_rows.is_some_and(|max| routed && rewritten >= max) {
            return Ok(());
        }
        let index = current_index(store, n).await?;
        let text = settings.text_fields();
        let Some(inputs) = merges_due(&index, target, routed, &text).into_iter().next() else {
            return Ok(());
        };
        if let Some(current) = index.current_routing().filter(|_| routed) {
            if !merge_routed(store, settings, clock, &index, current, &inputs, round).await? {
                return Ok(());
            }
            rewritten += inputs.iter().map(|s| s.rows).sum::<u64>();
            continue;
        }
        let mut rows: Vec<Prepared> = Vec::new();
        for shard in &inputs {
            let loaded = match segment::load(store, &shard.key, shape).await {
                Ok(seg) => load_deletions(store, shard).await.map(|dv| (seg, dv)),
                Err(e) => Err(e.into()),
            };
            let (seg, dv) = match loaded {
                Ok(both) => both,
                Err(e) => {
                    // Merges wait until the shard is repaired.
                    round.unreadable.push(damaged(e)?);
                    return Ok(());
                }
            };
            rows.extend(
                (0..seg.len())
                    .filter(|i| !dv.is_dead(*i as u64))
                    .map(|i| seg.prepared(i)),
            );
        }
        let level = inputs.iter().map(|s| s.level).max().unwrap_or(0) + 1;
        let merged_rows = rows.len() as u64;
        let (new_shards, written_at) = write_shards(store, settings, clock, rows, level).await?;
        let merge = Merged {
            expected: index.generation,
            inputs: &inputs,
            outputs: &new_shards,
            written_at,
            level,
            rows: merged_rows,
        };
        if !commit_merge(store, settings, clock, merge, round).await? {
            round.superseded = true;
            return Ok(());
        }
    }
}

/// One merge under the current routing ([`merges_due`]): the inputs' live
/// rows, each in its cluster (rows of another routing assigned now),
/// rewritten as routed shards, one level up (a migration stays at its
/// level). Returns whether it committed.
async fn merge_routed(
    store: &dyn ObjectStore,
    settings: &Settings,
    clock: &DynClock,
    index: &IndexManifest,
    current: &RoutingEntry,
    inputs: &[ShardEntry],
    round: &mut IndexRound,
) -> Result<bool, CompactError> {
    let routing = routed::load_routing(store, current).await?;
    let (clusters, known) = match routed::live_rows_by_cluster(store, inputs, &routing).await {
        Ok(c) => c,
        Err(e) => {
            // Merges wait until the shard is repaired.
            round.unreadable.push(damaged(e)?);
            return Ok(false);
        }
    };
    // A migration (or a text backfill) rewrites shards in place: same level.
    let text = settings.text_fields();
    let migration = inputs
        .iter()
        .any(|s| s.routing != Some(current.generation) || !s.indexes_text(&text));
    let top = inputs.iter().map(|s| s.level).max().unwrap_or(0);
    let level = if migration { top } else { top + 1 };
    let rows: u64 = clusters.iter().map(|(_, r)| r.len() as u64).sum();
    let cap = shard_target_rows(settings) as usize;
    let (outputs, written_at) =
        routed::write_routed(store, clock, clusters, known, routing, level, cap, &text).await?;
    let merge = Merged {
        expected: index.generation,
        inputs,
        outputs: &outputs,
        written_at,
        level,
        rows,
    };
    if !commit_merge(store, settings, clock, merge, round).await? {
        round.superseded = true;
        return Ok(false);
    }
    Ok(true)
}

/// Replaces the shards this call's rounds wrote (still listed, under
/// the current routing) by shards of disjoint cluster ranges at the next
/// level, in one commit (`routed::write_by_cluster_range`: one output's
/// rows in memory at a time). Anything in the way (a shard unreadable,
/// the inputs changed, the commit too late) leaves the rounds' shards as
/// they are: they are correct, only costlier to query.
async fn rewrite_by_cluster_range(
    store: &dyn ObjectStore,
    settings: &Settings,
    clock: &DynClock,
    round: &mut IndexRound,
) -> Result<(), CompactError> {
    let n = settings.partition_count;
    let index = current_index(store, n).await?;
    let Some(current) = index.current_routing() else {
        return Ok(());
    };
    let inputs: Vec<ShardEntry> = index
        .shards
        .iter()
        .filter(|s| round.shards_written.contains(&s.key) && s.routing == Some(current.generation))
        .cloned()
        .collect();
    if inputs.len() < 2 {
        return Ok(());
    }
    let routing = routed::load_routing(store, current).await?;
    // Full-size outputs, as a merge writes: a rewrite holds one output's
    // rows and its encoded bytes at once (a merge holds its inputs too).
    // Half-size outputs kept the indexer at ~1.15 GB building the 4M
    // noisy-copy set, in 24 shards; full-size ones at ~1.44 GB in 12, and
    // a cold query there makes 14 % fewer requests (fewer heads, its
    // probed clusters in fewer shards).
    let cap = shard_target_rows(settings) as usize;
    let text = settings.text_fields();
    let level = inputs.iter().map(|s| s.level).max().unwrap_or(0) + 1;
    let written =
        routed::write_by_cluster_range(store, clock, &inputs, routing, level, cap, &text).await;
    let (outputs, written_at) = match written {
        Ok(w) => w,
        Err(e) => {
            round.unreadable.push(damaged(e)?);
            return Ok(());
        }
    };
    let merge = Merged {
        expected: index.generation,
        inputs: &inputs,
        outputs: &outputs,
        written_at,
        level,
        rows: inputs.iter().map(|s| s.rows - s.dead.min(s.rows)).sum(),
    };
    // Not committed (the index moved on): the outputs are orphans for GC
    // and the rounds' shards stay.
    commit_merge(store, settings, clock, merge, round).await?;
    Ok(())
}

/// A merge's outputs, written, to commit in place of its inputs.
struct Merged<'a> {
    /// The index manifest generation the inputs were read at.
    expected: u64,
    inputs: &'a [ShardEntry],
    outputs: &'a [ShardEntry],
    /// When the outputs' first PUT was sent.
    written_at: std::time::SystemTime,
    level: u32,
    /// Live rows the outputs hold.
    rows: u64,
}

/// Replaces a merge's inputs by its outputs in one index-manifest commit
/// (the inputs and their deletion vectors to `retired`) and records the
/// merge in `round`. Returns false when it did not commit (the index
/// moved on, or the outputs are too old to commit): they are orphans.
async fn commit_merge(
    store: &dyn ObjectStore,
    settings: &Settings,
    clock: &DynClock,
    merge: Merged<'_>,
    round: &mut IndexRound,
) -> Result<bool, CompactError> {
    let retired_at = format_time(crate::coord::skew::store_now(store, clock.as_ref()).await?);
    let late = || too_late(clock, merge.written_at, settings);
    let commit = MergeCommit {
        inputs: merge.inputs,
        outputs: merge.outputs,
    };
    let n = settings.partition_count;
    let committed = replace_merged(
        store,
        n,
        Backoff::default(),
        merge.expected,
        late,
        commit,
        &retired_at,
    );
    let Some(m) = committed.await? else {
        return Ok(false);
    };
    round.generation = Some(m.generation);
    for out in merge.outputs {
        round.merged.push(Merge {
            inputs: merge.inputs.iter().map(|s| s.key.clone()).collect(),
            output: out.key.clone(),
            level: merge.level,
            rows: merge.rows,
        });
    }
    Ok(true)
}

/// Whether objects PUT at `written_at` are too old to commit (GC may
/// take unreferenced objects after the grace period; see
/// [`Settings::commit_age_bound`]). The round gives up; the next redoes it.
pub(super) fn too_late(
    clock: &DynClock,
    written_at: std::time::SystemTime,
    settings: &Settings,
) -> bool {
    let age = clock.now().duration_since(written_at).unwrap_or_default();
    let late = age > settings.commit_age_bound();
    if late {
        tracing::warn!(
            age_s = age.as_secs(),
            "index round too slow to commit; giving it up"
        );
    }
    late
}

/// The ids of a shard's rows. Shards are immutable, so an indexer that
/// runs round after round in one process (a `serve` writer, a warm
/// Lambda) reads each shard once for its ids instead of every shard
/// whole every round. Keyed by store and shard key; at most 256 MB of ids.
async fn shard_ids(
    store: &dyn ObjectStore,
    shard: &ShardEntry,
    shape: Shape,
) -> Result<Arc<Vec<String>>, CompactError> {
    type Ids = moka::future::Cache<String, Arc<Vec<String>>>;
    static CACHE: std::sync::OnceLock<Ids> = std::sync::OnceLock::new();
    let cache = CACHE.get_or_init(|| {
        moka::future::Cache::builder()
            .max_capacity(256 << 20)
            .weigher(|_k: &String, v: &Arc<Vec<String>>| {
                let bytes: usize = v.iter().map(|id| id.len() + 24).sum();
                u32::try_from(bytes).unwrap_or(u32::MAX)
            })
            .build()
    });
    let key = format!("{}\n{}", store.describe(), shard.key);
    if let Some(ids) = cache.get(&key).await {
        if ids.len() as u64 == shard.rows {
            return Ok(ids);
        }
    }
    let seg = segment::load(store, &shard.key, shape).await?;
    let ids = Arc::new(seg.ids().to_vec());
    cache.insert(key, ids.clone()).await;
    Ok(ids)
}

/// A shard's deletion vector (all rows live when it has none).
pub(super) async fn load_deletions(
    store: &dyn ObjectStore,
    shard: &ShardEntry,
) -> Result<DeletionVector, CompactError> {
    Ok(match &shard.deletions {
        Some(key) => {
            let got = store.get(key).await.map_err(CoordError::from)?;
            DeletionVector::decode(key, &got.bytes, shard.rows)?
        }
        None => DeletionVector::with_text(shard.rows, shard.text_fields.len()),
    })
}

/// Builds shards of `rows` at `level` (the configured ANN index, off the
/// async runtime) and PUTs them create-only. Returns their entries and
/// when the first PUT was sent (the commit age bound counts from it).
pub(super) async fn write_shards(
    store: &dyn ObjectStore,
    settings: &Settings,
    clock: &DynClock,
    rows: Vec<Prepared>,
    level: u32,
) -> Result<(Vec<ShardEntry>, std::time::SystemTime), CompactError> {
    let now = clock.now();
    let shape = shape_of(settings);
    let outputs = if rows.is_empty() {
        Vec::new()
    } else {
        let header = shard_header(shape, now);
        let ix = shard_index_settings(settings);
        crate::cpu::run(move || build_shards(rows, shape, &ix, &header)).await
    };
    let written_at = clock.now();
    Ok((put_shards(store, now, level, outputs).await?, written_at))
}

/// PUTs built shards create-only under fresh keys (stamped `now`) and
/// returns their index manifest entries at `level`.
pub(super) async fn put_shards(
    store: &dyn ObjectStore,
    now: std::time::SystemTime,
    level: u32,
    outputs: Vec<ShardOut>,
) -> Result<Vec<ShardEntry>, CompactError> {
    let mut entries = Vec::with_capacity(outputs.len());
    for out in outputs {
        let key = new_shard_key(now);
        let bytes = out.bytes.len() as u64;
        put_new_object(store, &key, out.bytes, Backoff::default()).await?;
        entries.push(ShardEntry {
            key,
            rows: out.rows,
            dead: 0,
            bytes,
            level,
            deletions: None,
            created_at: format_time(now),
            head_bytes: out.head_bytes,
            routing: out.routing,
            text_fields: out.text_fields,
            extra: Default::default(),
        });
    }
    Ok(entries)
}

/// One shard object to write.
pub(super) struct ShardOut {
    pub bytes: bytes::Bytes,
    pub rows: u64,
    pub head_bytes: Option<u64>,
    /// The routing generation of a routed shard.
    pub routing: Option<u64>,
    /// The searchable keys its text index covers.
    pub text_fields: Vec<crate::coord::index_manifest::ShardTextField>,
}

/// Encodes `rows` into shards of at most the target size: with the
/// default IVF index, range-readable shards (`index::shard`); with
/// another index kind (HNSW for warm-only deployments, or none), the
/// segment format with that index.
fn build_shards(
    rows: Vec<Prepared>,
    shape: Shape,
    ix: &crate::vocab::IndexSettings,
    header: &SegmentHeader,
) -> Vec<ShardOut> {
    if ix.kind != crate::vocab::AnnKind::Ivf {
        let mut secs = 0.0;
        let outs = build_outputs(rows, shape.dimensions, shape.metric, ix, header, &mut secs);
        return outs
            .into_iter()
            .map(|o| ShardOut {
                bytes: o.bytes,
                rows: o.records,
                head_bytes: None,
                routing: None,
                text_fields: Vec::new(),
            })
            .collect();
    }
    let cap = ix.max_segment_records.max(1) as usize;
    let nlist = ix.nlist.map(|n| n as usize);
    crate::index::shard::build(rows, shape, nlist, cap, header)
        .into_iter()
        .map(|b| ShardOut {
            bytes: b.bytes,
            rows: b.rows,
            head_bytes: Some(b.head_bytes),
            routing: None,
            text_fields: Vec::new(),
        })
        .collect()
}

/// The shape every shard of `settings`' index has.
pub(super) fn shape_of(settings: &Settings) -> Shape {
    Shape {
        dimensions: settings.dimensions as usize,
        metric: settings.metric(),
    }
}

/// The index manifest, which exists from init on.
pub(super) async fn current_index(
    store: &dyn ObjectStore,
    n: u32,
) -> Result<IndexManifest, CompactError> {
    match read_index_manifest(store, n).await? {
        Some((index, _)) => Ok(index),
        None => Err(crate::coord::index_manifest::missing_index_manifest().into()),
    }
}

fn shard_header(shape: Shape, now: std::time::SystemTime) -> SegmentHeader {
    SegmentHeader {
        format_version: FORMAT_VERSION,
        dimensions: shape.dimensions as u32,
        metric: shape.metric,
        record_count: 0,
        created_at_ms: unix_millis(now),
        writer_id: "indexer".into(),
        has_index: false,
    }
}
