//! The write path (DESIGN section 6): validation, segments, group commit.
//!
//! [`Writer::upsert`] and [`Writer::delete`] validate the whole batch first
//! (a rejected batch writes nothing), split it by partition, and return only
//! after every affected partition's manifest commit succeeded:
//! **acknowledged = durable**. If one partition fails, the call fails; the
//! partitions that did commit stay committed (a retry of the same call is
//! harmless, since a newer identical version changes nothing).
//!
//! **Group commit.** Each partition has a queue and a commit lock. A caller
//! enqueues its records and waits for the lock; whoever gets it takes
//! *everything* queued, writes one segment and commits it, then hands the
//! result to every caller whose records were in it. Calls that arrive while
//! a commit is in flight therefore share the next segment, so many small
//! concurrent writes cost few PUTs. If a committing caller is cancelled
//! mid-commit, the callers it carried see their result channel close and
//! enqueue their records again.
//!
//! Per commit: one segment PUT (create-only, under a fresh random key), then
//! the manifest append (GET + conditional PUT, retried on conflict with
//! jittered backoff). A crash between the two leaves an unreferenced
//! segment for GC and the write unacknowledged.

mod batch;

pub use batch::{BatchWriter, BatchWriterOptions, Durable, DurableHook, FlushReport};

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::sync::oneshot;
use tracing::Instrument;

use crate::coord::cas::{put_new_object, Backoff};
use crate::coord::clock::{format_time, unix_millis, DynClock};
use crate::coord::manifest::{append_segments, CommitRules, Section, SegmentEntry, SegmentStats};
use crate::coord::paths::{new_batch_key, new_segment_key, SegmentOrigin};
use crate::coord::{partition_of, CoordError, Settings};
pub use crate::record::StoredRecord;
use crate::record::{
    dedupe_last_wins, prepare_batch, prepare_deletes, InvalidInput, Prepared, Record, Schema,
    DEFAULT_MAX_BATCH_BYTES, DEFAULT_MAX_BATCH_RECORDS,
};
use crate::segment::batch::encode_batch;
use crate::segment::{encode_segment, SegmentError, SegmentHeader, FORMAT_VERSION};
use crate::store::{DynStore, StoreError};
use std::time::SystemTime;

/// Errors of the write path.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// The batch was rejected before anything was written.
    #[error("invalid input: {0}")]
    Invalid(#[from] InvalidInput),
    /// A partition's commit failed; its records are not acknowledged.
    /// Every caller whose records shared the commit gets the same source.
    #[error("commit to partition {partition} failed: {source}")]
    Commit {
        partition: u32,
        #[source]
        source: Arc<WriteError>,
    },
    #[error(transparent)]
    Coord(#[from] CoordError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Segment(#[from] SegmentError),
}

impl WriteError {
    /// What a caller can do about it.
    pub fn kind(&self) -> crate::vocab::ErrorKind {
        match self {
            WriteError::Invalid(_) => crate::vocab::ErrorKind::InvalidInput,
            WriteError::Commit { source, .. } => source.kind(),
            WriteError::Coord(e) => e.kind(),
            WriteError::Store(e) => e.kind(),
            WriteError::Segment(_) => crate::vocab::ErrorKind::Corrupt,
        }
    }

    pub fn is_retryable(&self) -> bool {
        self.kind().is_retryable()
    }
}

/// Writer settings.
#[derive(Clone, Debug)]
pub struct WriterOptions {
    /// Most records one `upsert`/`delete` call may carry.
    pub max_batch_records: usize,
    /// Most bytes (ids + vectors + metadata) one call may carry.
    pub max_batch_bytes: usize,
    /// Backoff for lost manifest races and transient errors.
    pub backoff: Backoff,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            max_batch_records: DEFAULT_MAX_BATCH_RECORDS,
            max_batch_bytes: DEFAULT_MAX_BATCH_BYTES,
            backoff: Backoff::default(),
        }
    }
}

/// One committed segment, as reported to the caller.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Committed {
    pub partition: u32,
    pub key: String,
    pub seq: u64,
    pub records: usize,
}

/// What an acknowledged write did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct WriteReceipt {
    /// Records (or tombstones) acknowledged, after in-batch deduplication.
    pub records: usize,
    /// The segments that carry them (shared with other callers under
    /// group commit).
    pub segments: Vec<Committed>,
}

/// Counters of one writer.
#[derive(Debug, Default)]
pub(crate) struct WriterStats {
    pub records: AtomicU64,
    pub segments: AtomicU64,
    pub bytes: AtomicU64,
    pub conflicts: AtomicU64,
    pub retries: AtomicU64,
    /// Objects the last background GC, and index round, could not read.
    pub unreadable_gc: AtomicU64,
    pub unreadable_index: AtomicU64,
}

/// Which background work found unreadable objects.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Worked {
    Gc,
    Index,
}

/// A snapshot of [`WriterStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct WriterStatsSnapshot {
    pub records: u64,
    pub segments: u64,
    pub bytes: u64,
    pub conflicts: u64,
    pub retries: u64,
    /// Objects (manifests, segments, shards) the last background GC or
    /// index round could not read and worked around (`shoal verify`
    /// names them).
    pub unreadable_objects: u64,
}

type CommitResult = Result<Committed, Arc<WriteError>>;

/// What a caller hands to a partition's group commit.
#[derive(Clone)]
enum Work {
    /// Records to write as a new segment of the partition (a write that
    /// touches only this partition).
    Records(Arc<Vec<Prepared>>),
    /// The partition's section of a batch object the caller already wrote
    /// (a write that touches several partitions).
    Section(Box<SegmentEntry>),
}

struct Pending {
    work: Work,
    done: oneshot::Sender<CommitResult>,
}

#[derive(Default)]
struct PartitionQueue {
    pending: Mutex<Vec<Pending>>,
    /// Held while committing; holds the creation time (unix ms) of the
    /// last segment written, so that a writer's segments of one partition
    /// carry strictly increasing times: their creation order is their
    /// commit order, which `shoal repair` relies on.
    commit: tokio::sync::Mutex<u64>,
}

struct Inner {
    store: DynStore,
    schema: std::sync::RwLock<Arc<Schema>>,
    partition_count: u32,
    writer_id: String,
    clock: DynClock,
    backoff: Backoff,
    queues: Vec<PartitionQueue>,
    stats: WriterStats,
    /// Partitions committed to since the last `take_dirty` (for compaction).
    dirty: Mutex<std::collections::BTreeSet<u32>>,
    /// The settings in force; replaced when the config changes (see
    /// [`Writer::set_settings`]).
    settings: std::sync::RwLock<Arc<Settings>>,
}

/// A handle that writes to one index. Cheap to clone; clones share queues
/// (and so group-commit with each other).
#[derive(Clone)]
pub struct Writer {
    inner: Arc<Inner>,
}

impl Writer {
    /// A writer for the index described by `settings` (validated).
    pub fn new(
        store: DynStore,
        settings: &Settings,
        writer_id: impl Into<String>,
        clock: DynClock,
        opts: WriterOptions,
    ) -> Self {
        let schema = Schema {
            dimensions: settings.dimensions as usize,
            metric: settings.metric(),
            domain_rules: settings.domain_rules(),
            text_fields: settings.text_fields(),
            max_records: opts.max_batch_records,
            max_bytes: opts.max_batch_bytes,
        };
        Writer {
            inner: Arc::new(Inner {
                store,
                schema: std::sync::RwLock::new(Arc::new(schema)),
                partition_count: settings.partition_count,
                writer_id: writer_id.into(),
                clock,
                backoff: opts.backoff,
                queues: (0..settings.partition_count)
                    .map(|_| PartitionQueue::default())
                    .collect(),
                stats: WriterStats::default(),
                dirty: Mutex::default(),
                settings: std::sync::RwLock::new(Arc::new(settings.clone())),
            }),
        }
    }

    /// What records are validated against now.
    pub fn schema(&self) -> Arc<Schema> {
        self.inner.schema.read().unwrap().clone()
    }

    pub fn partition_count(&self) -> u32 {
        self.inner.partition_count
    }

    /// The index settings in force.
    pub fn settings(&self) -> Arc<Settings> {
        self.inner.settings.read().unwrap().clone()
    }

    /// Takes changed settings (a new config): domain rules, the grace
    /// period, index and compaction settings. The shape (dimensions,
    /// metric, partitions) never changes under a writer.
    pub fn set_settings(&self, settings: &Settings) {
        let mut schema = (*self.schema()).clone();
        schema.domain_rules = settings.domain_rules();
        schema.text_fields = settings.text_fields();
        *self.inner.schema.write().unwrap() = Arc::new(schema);
        *self.inner.settings.write().unwrap() = Arc::new(settings.clone());
    }

    pub fn writer_id(&self) -> &str {
        &self.inner.writer_id
    }

    pub fn store(&self) -> &DynStore {
        &self.inner.store
    }

    pub fn clock(&self) -> &DynClock {
        &self.inner.clock
    }

    /// Marks a partition for compaction again (after a failed attempt).
    pub(crate) fn mark_dirty(&self, p: u32) {
        self.inner.dirty.lock().unwrap().insert(p);
    }

    /// Partitions committed to since the last call (compaction candidates).
    pub(crate) fn take_dirty(&self) -> Vec<u32> {
        std::mem::take(&mut *self.inner.dirty.lock().unwrap())
            .into_iter()
            .collect()
    }

    pub fn stats(&self) -> WriterStatsSnapshot {
        let s = &self.inner.stats;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        WriterStatsSnapshot {
            records: l(&s.records),
            segments: l(&s.segments),
            bytes: l(&s.bytes),
            conflicts: l(&s.conflicts),
            retries: l(&s.retries),
            unreadable_objects: l(&s.unreadable_gc) + l(&s.unreadable_index),
        }
    }

    /// Records how many objects the last background GC or index round
    /// could not read.
    pub(crate) fn note_unreadable(&self, by: Worked, n: usize) {
        let s = &self.inner.stats;
        let gauge = match by {
            Worked::Gc => &s.unreadable_gc,
            Worked::Index => &s.unreadable_index,
        };
        gauge.store(n as u64, Ordering::Relaxed);
    }

    /// Inserts or replaces records. Returns once every record is in a
    /// committed manifest. Duplicate ids within `records`: last wins.
    pub async fn upsert(&self, records: &[Record]) -> Result<WriteReceipt, WriteError> {
        let prepared = prepare_batch(records, &self.schema())?;
        self.write_prepared(prepared).await
    }

    /// Deletes ids (writes tombstones). Deleting an absent id is fine.
    pub async fn delete(&self, ids: &[String]) -> Result<WriteReceipt, WriteError> {
        let prepared = prepare_deletes(ids, &self.schema())?;
        self.write_prepared(prepared).await
    }

    /// Commits already validated records, grouped by partition: a write
    /// that touches one partition joins its group commit; one that touches
    /// several is written as one batch object (see [`Writer::write_batch`]).
    pub(crate) async fn write_prepared(
        &self,
        prepared: Vec<Prepared>,
    ) -> Result<WriteReceipt, WriteError> {
        let total = prepared.len();
        let mut by_partition: BTreeMap<u32, Vec<Prepared>> = BTreeMap::new();
        for r in prepared {
            by_partition
                .entry(partition_of(&r.id, self.inner.partition_count))
                .or_default()
                .push(r);
        }
        let segments = if by_partition.len() > 1 {
            self.write_batch(by_partition).await?
        } else {
            let commits = by_partition
                .into_iter()
                .map(|(p, recs)| self.submit(p, Work::Records(Arc::new(recs))));
            let results = futures::future::join_all(commits).await;
            results.into_iter().collect::<Result<Vec<_>, _>>()?
        };
        Ok(WriteReceipt {
            records: total,
            segments,
        })
    }

    /// Writes records of several partitions as one batch object (one PUT),
    /// then commits each partition's section through that partition's
    /// group commit. A partition whose commit came too late (the process
    /// paused past the commit age bound) has its records written again in
    /// a fresh batch object; an object no partition committed is deleted.
    async fn write_batch(
        &self,
        mut remaining: BTreeMap<u32, Vec<Prepared>>,
    ) -> Result<Vec<Committed>, WriteError> {
        const TRIES: u32 = 3;
        let mut done = Vec::with_capacity(remaining.len());
        for attempt in 1..=TRIES {
            let (key, entries, bytes, written_at) = self.put_batch_object(&remaining).await?;
            crate::mutation::before_commit(&key).await;
            let commits = entries
                .into_iter()
                .map(|(p, e)| async move { (p, self.submit(p, Work::Section(Box::new(e))).await) });
            let results = futures::future::join_all(commits).await;
            // Only a commit refused as too late or for a missing manifest
            // is certainly not in a manifest: any other error (a timeout
            // after the PUT landed, ...) may hide a commit, so the object
            // is deleted only when every partition was refused.
            let mut maybe_committed = false;
            let mut first_error = None;
            let mut too_late = BTreeMap::new();
            for (p, r) in results {
                match r {
                    Ok(c) => {
                        maybe_committed = true;
                        remaining.remove(&p);
                        done.push(c);
                    }
                    Err(e) => {
                        maybe_committed |= !certainly_not_committed(&e);
                        if is_too_late(&e) && attempt < TRIES {
                            tracing::warn!(partition = p, error = %e, "writing the records again");
                            too_late.insert(p, ());
                        } else {
                            first_error.get_or_insert(e);
                        }
                    }
                }
            }
            if maybe_committed {
                self.ensure_still_there(&key, bytes, written_at).await?;
            } else if let Err(d) = self.inner.store.delete(&key).await {
                tracing::warn!(key, error = %d, "could not delete an uncommitted batch object");
            }
            if let Some(e) = first_error {
                return Err(e);
            }
            remaining.retain(|p, _| too_late.contains_key(p));
            if remaining.is_empty() {
                break;
            }
        }
        done.sort_by_key(|c| c.partition);
        Ok(done)
    }

    /// Encodes one section per partition into a batch object and PUTs it
    /// (create-only); returns its key, each partition's manifest entry,
    /// the bytes (for [`Writer::ensure_still_there`]) and when it was
    /// written.
    async fn put_batch_object(
        &self,
        parts: &BTreeMap<u32, Vec<Prepared>>,
    ) -> Result<(String, Vec<(u32, SegmentEntry)>, bytes::Bytes, SystemTime), WriteError> {
        let inner = &self.inner;
        let ms = unix_millis(inner.clock.now());
        let now = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
        let first = *parts.keys().next().expect("a batch spans partitions");
        let key = new_batch_key(first, now);
        let schema = inner.schema.read().unwrap().clone();
        let header = SegmentHeader {
            format_version: FORMAT_VERSION,
            dimensions: schema.dimensions as u32,
            metric: schema.metric,
            record_count: 0,
            created_at_ms: ms,
            writer_id: inner.writer_id.clone(),
            has_index: false,
        };
        let sections: Vec<(u32, bytes::Bytes)> = parts
            .iter()
            .map(|(p, records)| {
                let h = SegmentHeader {
                    record_count: records.len() as u64,
                    ..header.clone()
                };
                (*p, encode_segment(&h, records, None))
            })
            .collect();
        let (bytes, placed) = encode_batch(&sections);
        let retries =
            put_new_object(inner.store.as_ref(), &key, bytes.clone(), inner.backoff).await?;
        inner
            .stats
            .retries
            .fetch_add(u64::from(retries), Ordering::Relaxed);
        let entries = placed
            .iter()
            .map(|s| {
                let records = &parts[&s.partition];
                let stats = SegmentStats {
                    records: records.len() as u64,
                    tombstones: records.iter().filter(|r| r.tombstone).count() as u64,
                    bytes: s.length,
                    indexed: false,
                };
                let section = Section {
                    offset: s.offset,
                    length: s.length,
                    object_bytes: Some(bytes.len() as u64),
                };
                let entry =
                    SegmentEntry::new(key.clone(), stats, format_time(now), &inner.writer_id)
                        .in_section(section);
                (s.partition, entry)
            })
            .collect();
        let s = &inner.stats;
        s.bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        Ok((key, entries, bytes, now))
    }

    /// Group commit for one partition (see the module docs).
    async fn submit(&self, p: u32, work: Work) -> Result<Committed, WriteError> {
        let q = &self.inner.queues[p as usize];
        loop {
            let (done, mut result) = oneshot::channel();
            q.pending.lock().unwrap().push(Pending {
                work: work.clone(),
                done,
            });
            let mut guard = q.commit.lock().await;
            match result.try_recv() {
                Ok(r) => return self.finish(p, r),
                // The caller that took our work was cancelled: re-enqueue.
                Err(oneshot::error::TryRecvError::Closed) => continue,
                Err(oneshot::error::TryRecvError::Empty) => {}
            }
            let batch = std::mem::take(&mut *q.pending.lock().unwrap());
            let mut records = Vec::new();
            let mut sections = Vec::new();
            for b in &batch {
                match &b.work {
                    Work::Records(r) => records.extend(r.iter().cloned()),
                    Work::Section(e) => sections.push((**e).clone()),
                }
            }
            // Sections first: their objects were written before the
            // segment the records become, so commit order stays creation
            // order (what `shoal repair` relies on).
            let from_sections = if sections.is_empty() {
                Vec::new()
            } else {
                self.commit_sections(p, &sections).await
            };
            let from_records = if records.is_empty() {
                None
            } else {
                let r = self.commit_partition(p, dedupe_last_wins(records), &mut guard);
                Some(r.await.map_err(Arc::new))
            };
            let mut from_sections = from_sections.into_iter();
            for b in batch {
                let r = match b.work {
                    Work::Records(_) => from_records.clone().expect("records were committed"),
                    Work::Section(_) => from_sections.next().expect("one result per section"),
                };
                let _ = b.done.send(r);
            }
            drop(guard);
            let r = result.await.expect("our own entry was in the batch");
            return self.finish(p, r);
        }
    }

    /// Appends sections of batch objects (already written by their
    /// callers) to partition `p`'s manifest in one compare-and-swap, in
    /// the order the objects were created (`shoal repair` orders by it).
    /// Each section's result, in the order given.
    async fn commit_sections(&self, p: u32, sections: &[SegmentEntry]) -> Vec<CommitResult> {
        let inner = &self.inner;
        let mut order: Vec<usize> = (0..sections.len()).collect();
        order.sort_by(|&a, &b| sections[a].created_at.cmp(&sections[b].created_at));
        let sorted: Vec<SegmentEntry> = order.iter().map(|&i| sections[i].clone()).collect();
        let oldest = sorted
            .iter()
            .filter_map(|e| crate::coord::clock::parse_time(&e.created_at))
            .min()
            .unwrap_or_else(|| inner.clock.now());
        let settings = inner.settings.read().unwrap().clone();
        let rules = CommitRules::new(&settings, oldest, inner.clock.as_ref(), inner.backoff);
        let appended = append_segments(inner.store.as_ref(), p, &sorted, rules).await;
        let appended = match appended {
            Ok(a) => a,
            Err(e) => {
                let e = Arc::new(WriteError::from(e));
                return sections.iter().map(|_| Err(e.clone())).collect();
            }
        };
        inner.dirty.lock().unwrap().insert(p);
        let s = &inner.stats;
        s.conflicts
            .fetch_add(u64::from(appended.conflicts), Ordering::Relaxed);
        s.retries
            .fetch_add(u64::from(appended.retries), Ordering::Relaxed);
        let mut results = vec![None; sections.len()];
        for (k, &i) in order.iter().enumerate() {
            let e = &sections[i];
            if appended.late.contains(&k) {
                let bound = inner.settings.read().unwrap().commit_age_bound();
                let late = CoordError::CommitTooLate {
                    key: e.key.clone(),
                    age_s: inner
                        .clock
                        .now()
                        .duration_since(
                            crate::coord::clock::parse_time(&e.created_at).unwrap_or(oldest),
                        )
                        .unwrap_or_default()
                        .as_secs(),
                    bound_s: bound.as_secs(),
                };
                results[i] = Some(Err(Arc::new(WriteError::from(late))));
                continue;
            }
            s.records.fetch_add(e.records, Ordering::Relaxed);
            s.segments.fetch_add(1, Ordering::Relaxed);
            results[i] = Some(Ok(Committed {
                partition: p,
                key: e.key.clone(),
                seq: appended.seqs[k],
                records: e.records as usize,
            }));
        }
        results
            .into_iter()
            .map(|r| r.expect("every section"))
            .collect()
    }

    /// The age bound is checked before the manifest PUT is sent; a pause
    /// after that check (the PUT in flight, the process frozen) could still
    /// land a commit after GC deleted the segment. So a commit that
    /// completed later than the bound after the segment PUT checks that the
    /// segment is there (one HEAD; fast commits never pay it) and, if GC
    /// took it, writes the same bytes back under the same key before the
    /// write is acknowledged.
    async fn ensure_still_there(
        &self,
        key: &str,
        bytes: bytes::Bytes,
        written_at: std::time::SystemTime,
    ) -> Result<(), WriteError> {
        let inner = &self.inner;
        let took = inner
            .clock
            .now()
            .duration_since(written_at)
            .unwrap_or_default();
        let unchecked = crate::mutation::active(crate::mutation::Mutation::NoAgeBound);
        if unchecked || took <= inner.settings.read().unwrap().commit_age_bound() {
            return Ok(());
        }
        match inner.store.head(key).await {
            Ok(_) => Ok(()),
            Err(StoreError::NotFound { .. }) => {
                tracing::warn!(
                    key,
                    took_s = took.as_secs(),
                    "a slow commit's segment was collected meanwhile; writing it back"
                );
                put_new_object(inner.store.as_ref(), key, bytes, inner.backoff).await?;
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    fn finish(&self, partition: u32, r: CommitResult) -> Result<Committed, WriteError> {
        r.map_err(|source| WriteError::Commit { partition, source })
    }

    /// Writes one segment and appends it to the partition's manifest. A
    /// commit refused for coming too late (the process was paused past the
    /// commit age bound between the segment PUT and the manifest commit)
    /// writes the records again as a fresh segment; the stale one was
    /// deleted by [`Writer::commit_segment`] (GC would have taken it too).
    async fn commit_partition(
        &self,
        p: u32,
        records: Vec<Prepared>,
        last_ms: &mut u64,
    ) -> Result<Committed, WriteError> {
        const TRIES: u32 = 3;
        let mut tries = 0;
        loop {
            tries += 1;
            match self.commit_segment(p, &records, last_ms).await {
                Err(WriteError::Coord(e @ CoordError::CommitTooLate { .. })) if tries < TRIES => {
                    tracing::warn!(partition = p, error = %e, "writing the records again");
                }
                r => return r,
            }
        }
    }

    async fn commit_segment(
        &self,
        p: u32,
        records: &[Prepared],
        last_ms: &mut u64,
    ) -> Result<Committed, WriteError> {
        let inner = &self.inner;
        let ms = unix_millis(inner.clock.now()).max(*last_ms + 1);
        *last_ms = ms;
        let now = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
        let key = new_segment_key(p, now, SegmentOrigin::Writer);
        let header = SegmentHeader {
            format_version: FORMAT_VERSION,
            dimensions: inner.schema.read().unwrap().dimensions as u32,
            metric: inner.schema.read().unwrap().metric,
            record_count: records.len() as u64,
            created_at_ms: unix_millis(now),
            writer_id: inner.writer_id.clone(),
            has_index: false,
        };
        let bytes = encode_segment(&header, records, None);
        let size = bytes.len() as u64;
        let tombstones = records.iter().filter(|r| r.tombstone).count() as u64;
        let span = tracing::info_span!(
            "commit",
            partition = p,
            records = records.len(),
            bytes = size,
            attempts = tracing::field::Empty,
            conflicts = tracing::field::Empty,
        );
        async {
            let retries =
                put_new_object(inner.store.as_ref(), &key, bytes.clone(), inner.backoff).await?;
            inner
                .stats
                .retries
                .fetch_add(u64::from(retries), Ordering::Relaxed);
            crate::mutation::before_commit(&key).await;
            let stats = SegmentStats {
                records: records.len() as u64,
                tombstones,
                bytes: size,
                indexed: false,
            };
            let entry = SegmentEntry::new(key.clone(), stats, format_time(now), &inner.writer_id);
            let settings = inner.settings.read().unwrap().clone();
            let rules = CommitRules::new(&settings, now, inner.clock.as_ref(), inner.backoff);
            let appended = match append_segments(inner.store.as_ref(), p, &[entry], rules).await {
                Ok(a) => a,
                Err(e) => {
                    if matches!(
                        e,
                        CoordError::MissingManifest { .. } | CoordError::CommitTooLate { .. }
                    ) {
                        // Certainly not committed (and never will be): leave
                        // no segment a repair could mistake for committed data.
                        if let Err(d) = inner.store.delete(&key).await {
                            tracing::warn!(key, error = %d, "could not delete an uncommitted segment");
                        }
                    }
                    return Err(e.into());
                }
            };
            let span = tracing::Span::current();
            span.record("attempts", appended.attempts);
            span.record("conflicts", appended.conflicts);
            if appended.already_committed {
                tracing::info!(
                    key,
                    "manifest append found its own segment already committed"
                );
            }
            self.ensure_still_there(&key, bytes, now).await?;
            inner.dirty.lock().unwrap().insert(p);
            let s = &inner.stats;
            s.records.fetch_add(records.len() as u64, Ordering::Relaxed);
            s.segments.fetch_add(1, Ordering::Relaxed);
            s.bytes.fetch_add(size, Ordering::Relaxed);
            s.conflicts
                .fetch_add(u64::from(appended.conflicts), Ordering::Relaxed);
            s.retries
                .fetch_add(u64::from(appended.retries), Ordering::Relaxed);
            Ok(Committed {
                partition: p,
                key,
                seq: appended.seqs[0],
                records: records.len(),
            })
        }
        .instrument(span)
        .await
    }
}

/// Whether a partition's commit failed only for coming too late (the
/// records can be written again).
fn is_too_late(e: &WriteError) -> bool {
    match e {
        WriteError::Commit { source, .. } => is_too_late(source),
        WriteError::Coord(CoordError::CommitTooLate { .. }) => true,
        _ => false,
    }
}

/// Whether a partition's commit failed in a way that proves nothing was
/// committed: refused as too late, or its manifest is missing.
fn certainly_not_committed(e: &WriteError) -> bool {
    match e {
        WriteError::Commit { source, .. } => certainly_not_committed(source),
        WriteError::Coord(
            CoordError::CommitTooLate { .. } | CoordError::MissingManifest { .. },
        ) => true,
        _ => false,
    }
}
