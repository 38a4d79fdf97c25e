//! The maintenance schedule: when compaction, indexing and GC run.
//!
//! Two schedules share the mechanisms of this module's siblings:
//! - the compactor's ([`compact_round`]): one invocation visits partitions
//!   in turn from a cursor saved in the bucket, until its deadline, and
//!   runs the indexer and GC after every full pass;
//! - a writer's ([`spawn_background`]): every interval it compacts the
//!   partitions it wrote to ([`compact_dirty`]), and now and then
//!   collects garbage and checks whether the index needs a round.
//!
//! The policy (what is due, what to do with a partition that outruns the
//! time left) lives here; [`crate::Db`] only hands over its store,
//! settings, clock and writer.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::gc::GcOptions;
use super::indexer::{index_round, IndexOptions, IndexRound};
use super::{compact_partition, piece_upto, CompactError, CompactOptions, CompactReport, Outcome};
use crate::coord::clock::DynClock;
use crate::coord::cursor::{read_cursor, save_cursor, Cursor};
use crate::coord::Settings;
use crate::store::{ETag, ObjectStore};
use crate::writer::Worked;
use crate::writer::Writer;

/// How often background writers collect garbage by default (one LIST of
/// the bucket each time).
pub(crate) const DEFAULT_GC_EVERY: Duration = Duration::from_secs(10 * 60);

/// How often background writers check whether the index needs a round
/// (one LIST of the manifests; a round, which reads every partition
/// manifest, only if something changed or was left to do).
const INDEX_CHECK_INTERVAL: Duration = Duration::from_secs(30);

/// What one scheduled compactor round did ([`crate::Db::compact_round`]).
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CompactRound {
    pub partitions_visited: u32,
    pub compacted: Vec<CompactReport>,
    /// Index rounds run (one per full pass, before its GC).
    pub indexed: Vec<IndexRound>,
    pub gc_runs: u32,
    pub cursor: Cursor,
}

/// What a round works with: the index, and who is working.
#[derive(Clone, Copy)]
pub(crate) struct Worker<'a> {
    pub(crate) store: &'a dyn ObjectStore,
    pub(crate) settings: &'a Settings,
    /// The instance id compactions and the indexer lease are held as.
    pub(crate) id: &'a str,
    pub(crate) clock: &'a DynClock,
}

/// The time an invocation has left: until `deadline - margin`.
#[derive(Clone, Copy)]
struct TimeLeft {
    deadline: Instant,
    margin: Duration,
}

impl TimeLeft {
    fn get(self) -> Duration {
        self.deadline
            .saturating_duration_since(Instant::now() + self.margin)
    }

    fn is_up(self) -> bool {
        self.get().is_zero()
    }
}

/// One scheduled compactor round (the compactor Lambda): compacts
/// partitions by policy, resuming where the last round stopped, until
/// `deadline - margin`; runs the indexer and GC after each full pass.
/// Progress is saved after every partition, and a partition (or an
/// indexer round) that outruns the time left is abandoned (its half-done
/// output is an orphan GC removes), recorded in the cursor as deferred
/// and skipped: the next invocation resumes after it, so one large
/// partition never stalls the others. A deferred partition is then
/// compacted in pieces while time is left, its oldest `1/2^d` of segments
/// at a time (`d` grows by one when a piece outruns the time left and
/// shrinks by one, to 1, when a piece fits), so it too makes progress; a
/// whole compaction that fits clears its deferrals. The indexer commits
/// after each shard merge, so an indexer round cut short keeps the merges
/// done.
pub(crate) async fn compact_round(
    w: Worker<'_>,
    deadline: Instant,
    margin: Duration,
    gc: &GcOptions,
) -> Result<CompactRound, CompactError> {
    let n = w.settings.partition_count;
    let mut cursor = read_cursor(w.store).await?;
    cursor.next_partition %= n;
    let (mut visited, mut compacted, mut gc_runs) = (0u32, Vec::new(), 0u32);
    let mut indexed = Vec::new();
    let left = TimeLeft { deadline, margin };
    while !left.is_up() && visited < n {
        let p = cursor.next_partition;
        compact_in_time(w, p, &mut cursor, left, &mut compacted).await?;
        visited += 1;
        cursor.next_partition = (p + 1) % n;
        if cursor.next_partition == 0 {
            cursor.passes += 1;
            if let Some(round) = index_in_time(w, &mut cursor, left).await? {
                indexed.push(round);
            }
            if !left.is_up() {
                super::gc::gc(w.store, w.settings, w.clock, gc).await?;
                gc_runs += 1;
            }
        }
        save_cursor(w.store, &cursor).await?;
    }
    Ok(CompactRound {
        partitions_visited: visited,
        compacted,
        indexed,
        gc_runs,
        cursor,
    })
}

/// Compacts partition `p` within the time left: a deferred partition goes
/// piece by piece while time is left (each piece committed), any other in
/// one compaction. One that outruns the time left is deferred (once more).
async fn compact_in_time(
    w: Worker<'_>,
    p: u32,
    cursor: &mut Cursor,
    left: TimeLeft,
    compacted: &mut Vec<CompactReport>,
) -> Result<(), CompactError> {
    loop {
        let mut opts = CompactOptions::default();
        if let Some(&d) = cursor.deferred.get(&p) {
            opts.upto_seq = piece_upto(w.store, w.settings, p, d).await?;
        }
        let work = compact_partition(w.store, w.settings, p, w.id, w.clock, &opts);
        match tokio::time::timeout(left.get(), work).await {
            Ok(outcome) => match outcome? {
                Outcome::Compacted(r) if opts.upto_seq.is_some() => {
                    compacted.push(r);
                    // It fit: try pieces twice as large.
                    if let Some(d) = cursor.deferred.get_mut(&p) {
                        *d = (*d - 1).max(1);
                    }
                    if left.is_up() {
                        return Ok(());
                    }
                }
                Outcome::Compacted(r) => {
                    compacted.push(r);
                    cursor.deferred.remove(&p);
                    return Ok(());
                }
                _ => {
                    cursor.deferred.remove(&p);
                    return Ok(());
                }
            },
            Err(_) => {
                tracing::warn!(partition = p, "compaction outran the invocation; deferred");
                *cursor.deferred.entry(p).or_default() += 1;
                return Ok(());
            }
        }
    }
}

/// An indexer round within the time left, taking at most the cursor's
/// row budget of tails; the budget shrinks when a round outruns the time
/// left (its result is then `None`, its lease released) and grows back
/// when one fits.
async fn index_in_time(
    w: Worker<'_>,
    cursor: &mut Cursor,
    left: TimeLeft,
) -> Result<Option<IndexRound>, CompactError> {
    // Rounds too large for an invocation take fewer tails.
    let opts = IndexOptions {
        max_rows: cursor.index_rows,
        ..Default::default()
    };
    let round = index_round(w.store, w.settings, w.id, w.clock, opts);
    match tokio::time::timeout(left.get(), round).await {
        Ok(round) => {
            let round = round?;
            cursor.next_index_budget(false);
            Ok(Some(round))
        }
        Err(_) => {
            tracing::warn!("indexer round outran the invocation; fewer tails next pass");
            cursor.next_index_budget(true);
            // The round was dropped where it stood, lease and all: give
            // the lease back now rather than keep every indexer out for
            // its TTL (what the round committed stays; the next finishes
            // its retirement).
            super::lease::release(w.store, w.settings.partition_count, w.id).await;
            Ok(None)
        }
    }
}

/// Compacts, by policy, the partitions `writer` committed to since the
/// last call; a partition that fails is marked again for the next round.
pub(crate) async fn compact_dirty(writer: &Writer) -> Vec<Outcome> {
    let mut outcomes = Vec::new();
    for p in writer.take_dirty() {
        let r = compact_partition(
            writer.store().as_ref(),
            &writer.settings(),
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

/// Runs [`compact_dirty`] every `interval` until the handle is aborted,
/// GC every `gc_every`, and an indexer round (by policy) every
/// [`INDEX_CHECK_INTERVAL`]: writers compact and index in the background.
pub(crate) fn spawn_background(
    writer: Writer,
    interval: Duration,
    gc_every: Option<Duration>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut last_index = Instant::now();
        let mut last_gc = Instant::now();
        let mut idle_at = None;
        let mut settled_at = None;
        loop {
            tokio::time::sleep(interval).await;
            compact_dirty(&writer).await;
            if gc_every.is_some_and(|every| last_gc.elapsed() >= every) {
                last_gc = Instant::now();
                gc_check(&writer, &mut settled_at).await;
            }
            if last_index.elapsed() >= INDEX_CHECK_INTERVAL {
                last_index = Instant::now();
                index_check(&writer, &mut idle_at).await;
            }
        }
    })
}

/// One background index check: an indexer round by policy, unless the
/// last one found nothing to do and no manifest changed since (one LIST
/// instead of reading every manifest: an idle index costs one request per
/// check). `idle_at` holds the manifests' ETags as of an idle round.
/// Returns whether a round ran.
pub(crate) async fn index_check(
    writer: &Writer,
    idle_at: &mut Option<BTreeMap<String, ETag>>,
) -> bool {
    let (store, settings) = (writer.store().as_ref(), writer.settings());
    let now = crate::coord::layout::manifest_etags(store).await.ok();
    if now.is_some() && *idle_at == now {
        return false;
    }
    let opts = IndexOptions::default();
    let round = index_round(store, &settings, writer.writer_id(), writer.clock(), opts).await;
    *idle_at = None;
    match round {
        Ok(r) => {
            writer.note_unreadable(Worked::Index, r.unreadable.len());
            // Nothing waiting, nothing done: idle until a manifest changes
            // (a commit after the listing makes the next one differ).
            let idle = r.generation.is_none()
                && r.tail_records == 0
                && r.unreadable.is_empty()
                && r.lease_held_by.is_none();
            if idle {
                *idle_at = now;
            }
        }
        Err(e) => tracing::warn!(error = %e, "background indexing failed; will retry"),
    }
    true
}

/// However settled an index looks, a background writer runs GC at least
/// this often: an orphan a dying writer left behind changes no manifest.
pub(crate) const GC_AT_LEAST_EVERY: Duration = Duration::from_secs(3600);

/// One background GC check: a GC run, unless the last one left the index
/// settled (nothing deleted, nothing waiting for the grace) and no
/// manifest changed since (one LIST instead of the run's listings and
/// manifest reads), for at most [`GC_AT_LEAST_EVERY`]. `settled_at` holds
/// the manifests' ETags as of a settled run, and when it ran. Returns
/// whether GC ran.
pub(crate) async fn gc_check(
    writer: &Writer,
    settled_at: &mut Option<(BTreeMap<String, ETag>, Instant)>,
) -> bool {
    let store = writer.store().as_ref();
    let now = crate::coord::layout::manifest_etags(store).await.ok();
    if let (Some(now), Some((then, ran))) = (&now, settled_at.as_ref()) {
        if now == then && ran.elapsed() < GC_AT_LEAST_EVERY {
            return false;
        }
    }
    let settled = background_gc(writer).await.is_some_and(|r| r.settled());
    *settled_at = now.filter(|_| settled).map(|n| (n, Instant::now()));
    true
}

/// One background GC run with the config's grace period; a failure is
/// logged and the next run retries.
async fn background_gc(writer: &Writer) -> Option<super::gc::GcReport> {
    let (store, settings) = (writer.store().as_ref(), writer.settings());
    let opts = GcOptions::default();
    match super::gc::gc(store, &settings, writer.clock(), &opts).await {
        Ok(r) => {
            writer.note_unreadable(Worked::Gc, r.unreadable.len());
            tracing::info!(
                deleted = r.deleted.len(),
                kept_young = r.kept_young,
                retired_waiting = r.retired_waiting,
                unreadable = r.unreadable.len(),
                "background gc"
            );
            Some(r)
        }
        Err(e) => {
            tracing::warn!(error = %e, "background gc failed; will retry");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::record::Record;
    use crate::store::memory::MemoryStore;
    use crate::store::Counted;

    /// An idle index costs a background writer one LIST per index check:
    /// no round (which reads every manifest) until a manifest changes or
    /// a round left work waiting.
    #[tokio::test]
    async fn an_idle_index_costs_one_list_per_check() {
        let store = Arc::new(Counted::new(Arc::new(MemoryStore::unique())));
        let dyn_store: crate::store::DynStore = store.clone();
        let (_, w) = crate::reader::tests::index_with_writer(&dyn_store, 8, 2).await;
        let mut idle_at = None;
        assert!(
            index_check(&w, &mut idle_at).await,
            "the first check runs a round"
        );
        assert!(idle_at.is_some(), "an empty index is idle");
        let before = store.counts();
        assert!(!index_check(&w, &mut idle_at).await);
        let c = store.counts().since(&before);
        assert_eq!((c.list, c.total()), (1, 1), "{c:?}");
        // A write changes a manifest: the next check runs a round, which
        // leaves the small tail waiting (not due yet), so checks go on.
        w.upsert(&[Record::new("a", vec![1.0, 2.0])]).await.unwrap();
        assert!(index_check(&w, &mut idle_at).await);
        assert!(idle_at.is_none(), "a tail is waiting");
        assert!(
            index_check(&w, &mut idle_at).await,
            "a waiting tail keeps rounds running"
        );
    }

    /// A settled index costs a background writer's GC check one LIST: no
    /// run (listings, manifest reads, the store-clock probe) until a
    /// manifest changes; a run that leaves something waiting keeps them
    /// coming.
    #[tokio::test]
    async fn a_settled_index_costs_one_list_per_gc_check() {
        let store = Arc::new(Counted::new(Arc::new(MemoryStore::unique())));
        let dyn_store: crate::store::DynStore = store.clone();
        let (_, w) = crate::reader::tests::index_with_writer(&dyn_store, 8, 2).await;
        let mut settled = None;
        assert!(gc_check(&w, &mut settled).await, "the first check runs");
        assert!(settled.is_some(), "an empty index is settled");
        let before = store.counts();
        assert!(!gc_check(&w, &mut settled).await);
        let c = store.counts().since(&before);
        assert_eq!((c.list, c.total()), (1, 1), "{c:?}");
        // A write changes manifests: the next check runs GC. An orphan
        // younger than the grace (a writer died before its commit) leaves
        // that run unsettled, so GC runs at every check until it is gone.
        w.upsert(&[
            Record::new("a", vec![1.0, 2.0]),
            Record::new("b", vec![2.0, 1.0]),
        ])
        .await
        .unwrap();
        store
            .put("vectors/p000/orphan.seg", bytes::Bytes::from_static(b"x"))
            .await
            .unwrap();
        let before = store.counts();
        assert!(gc_check(&w, &mut settled).await);
        assert!(store.counts().since(&before).total() > 1);
        assert!(settled.is_none(), "a young orphan waits for the grace");
        assert!(gc_check(&w, &mut settled).await, "so GC keeps running");
    }
}
