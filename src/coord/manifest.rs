//! Partition manifests `_brainy/manifests/pNNN.json`: the committed segment
//! list of one partition (DESIGN section 6).
//!
//! Idempotence covers compaction too: a retried append finds its segment
//! among the live entries or, if a compaction retired it in between,
//! among the retired ones (see [`append_segments`]).
//!
//! Every partition manifest exists from `init` on (the config records it as
//! `partitionsInitialized`), so a missing manifest is corruption: nothing
//! here recreates one, and [`create_missing`] (init, and the one-time
//! upgrade of older indexes) creates only manifests of partitions that hold
//! no objects. [`restore`] is the one way back for a lost manifest
//! (`shoal repair`).
//!
//! Two more rules bound what a commit may do (see [`CommitRules`]): a
//! segment older than the commit age bound is never committed, and
//! retired entries older than the grace period are pruned, which keeps a
//! manifest's size bounded between GC runs.
//!
//! This is the one room where manifests change. Each mutation is a named
//! function over the generic compare-and-swap loop ([`super::cas`]):
//! [`append_segments`] (a writer's commit), [`replace_prefix`] (a
//! compaction's commit) and [`trim_retired`] (GC forgetting deleted
//! objects). No other module builds a manifest by hand.
//!
//! A segment is committed exactly when its entry is in the manifest. Entries
//! are appended with compare-and-swap: read the manifest and its ETag,
//! append the segment with `seq = nextSeq`, bump `nextSeq`, write with
//! `If-Match` (create-only when the manifest does not exist yet), and on a
//! lost race re-read and retry. Segment keys are unique, so "is my key
//! already listed?" makes the append idempotent: a writer whose manifest PUT
//! was applied but whose response was lost finds its own entry on the retry
//! and reports success instead of committing twice.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::cas::{self, Backoff, Step};
use super::clock::{parse_time, Clock};
use super::config::Settings;
use super::error::CoordError;
use super::paths::{
    is_batch_key, legacy_manifest_key, manifest_key, partition_dir, partition_of_manifest,
    MANIFESTS_PREFIX, VECTORS_PREFIX,
};
use crate::mutation::{self, Mutation};
use crate::store::{ETag, ObjectStore, StoreError};

pub(crate) const MANIFEST_VERSION: u32 = 2;
/// The version a manifest takes when it first names a section of a batch
/// object: older shoal versions then refuse it with a clear error instead
/// of reading the whole batch object as one segment.
pub(crate) const SECTIONS_MANIFEST_VERSION: u32 = 2;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub version: u32,
    pub partition: u32,
    /// The seq the next committed segment gets. Starts at 1.
    pub next_seq: u64,
    /// Committed segments in ascending seq order. Compaction outputs share
    /// the seq of the newest segment they replaced (they hold distinct
    /// ids), so seqs never decrease but may repeat.
    pub segments: Vec<SegmentEntry>,
    /// Segments replaced by compaction, kept for GC's grace period so that
    /// readers holding an older manifest can still fetch them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retired: Vec<RetiredEntry>,
    /// The indexer retired every segment with seq <= this into the index
    /// shards (DESIGN section 11): a reader holding this manifest needs an
    /// index manifest whose watermark for the partition is at least this.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub indexed_through: u64,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// A segment no longer referenced, and since when.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RetiredEntry {
    pub key: String,
    pub retired_at: String,
    /// The seq the segment was committed at (absent in manifests written
    /// before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// The section of a batch object it named (see [`SegmentEntry::section`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section: Option<Section>,
}

/// One committed segment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SegmentEntry {
    pub key: String,
    /// Commit order within the partition: higher is newer.
    pub seq: u64,
    pub records: u64,
    pub tombstones: u64,
    pub bytes: u64,
    pub created_at: String,
    pub writer_id: String,
    /// Whether the segment carries an ANN index.
    #[serde(default)]
    pub indexed: bool,
    /// Where in `key` the segment lies when `key` is a batch object
    /// holding several partitions' sections (`None`: the whole object).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section: Option<Section>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A byte range of a batch object: one partition's segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Section {
    pub offset: u64,
    pub length: u64,
    /// The whole object's size: a reader fetches a small object whole for
    /// all its sections at once, a large one section by section.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_bytes: Option<u64>,
}

impl SegmentEntry {
    /// An entry for a segment about to be committed or replaced into a
    /// manifest. `seq` is 0 until [`append_segments`] assigns one (or
    /// [`replace_prefix`] gives it the prefix's).
    pub fn new(key: String, stats: SegmentStats, created_at: String, writer_id: &str) -> Self {
        SegmentEntry {
            key,
            seq: 0,
            records: stats.records,
            tombstones: stats.tombstones,
            bytes: stats.bytes,
            created_at,
            writer_id: writer_id.to_string(),
            indexed: stats.indexed,
            section: None,
            extra: Map::new(),
        }
    }

    /// This entry, naming `section` of the batch object at its key.
    pub fn in_section(self, section: Section) -> Self {
        SegmentEntry {
            section: Some(section),
            ..self
        }
    }

    /// The section as (offset, length), for `segment::load_at`.
    pub fn range(&self) -> Option<(u64, u64)> {
        self.section.map(|s| (s.offset, s.length))
    }

    /// A name for the segment unique across partitions: its key, plus the
    /// section for a batch object's (cache keys, reports).
    pub fn locator(&self) -> String {
        match self.section {
            None => self.key.clone(),
            Some(s) => format!("{}#{}+{}", self.key, s.offset, s.length),
        }
    }
}

/// What a manifest records about a segment's contents.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SegmentStats {
    pub records: u64,
    pub tombstones: u64,
    pub bytes: u64,
    pub indexed: bool,
}

impl Manifest {
    pub fn empty(partition: u32) -> Self {
        Manifest {
            // Version 2 only once a section is named (see
            // SECTIONS_MANIFEST_VERSION): older versions read the rest.
            version: 1,
            partition,
            next_seq: 1,
            segments: Vec::new(),
            retired: Vec::new(),
            indexed_through: 0,
            extra: Map::new(),
        }
    }

    pub fn find(&self, segment_key: &str) -> Option<&SegmentEntry> {
        self.segments.iter().find(|s| s.key == segment_key)
    }

    /// Records (tombstones included) across all segments.
    pub fn total_records(&self) -> u64 {
        self.segments.iter().map(|s| s.records).sum()
    }

    /// Checks the invariants a reader relies on; the error names the key.
    pub fn validate(&self, partition: u32) -> Result<(), CoordError> {
        let key = manifest_key(partition);
        let bad = |reason: String| CoordError::Corrupt {
            key: key.clone(),
            reason,
            found: format!("manifest for partition {}", self.partition),
        };
        if self.version > MANIFEST_VERSION {
            return Err(bad(format!(
                "manifest version {} is newer than this shoal understands ({MANIFEST_VERSION})",
                self.version
            )));
        }
        if self.partition != partition {
            return Err(bad(format!(
                "manifest says partition {}, but it is stored as partition {partition}",
                self.partition
            )));
        }
        let dir = format!("{}/", partition_dir(partition));
        let mut last = 0;
        for s in &self.segments {
            if s.seq == 0 || s.seq < last || s.seq >= self.next_seq {
                return Err(bad(format!(
                    "segment seqs must not decrease and stay below nextSeq {} (seq {} after {last})",
                    self.next_seq, s.seq
                )));
            }
            let batch =
                s.section.is_some() && is_batch_key(&s.key) && partition_of_key(&s.key).is_some();
            if !(s.key.starts_with(&dir) || batch) || s.key.contains("..") {
                return Err(bad(format!("segment key {} is outside {dir}", s.key)));
            }
            last = s.seq;
        }
        if self.version < SECTIONS_MANIFEST_VERSION {
            if let Some(s) = self.segments.iter().find(|s| s.section.is_some()) {
                return Err(bad(format!(
                    "segment {} names a section, which needs manifest version \
                     {SECTIONS_MANIFEST_VERSION} (found {})",
                    s.key, self.version
                )));
            }
        }
        if self.indexed_through >= self.next_seq {
            return Err(bad(format!(
                "indexedThrough {} must stay below nextSeq {}",
                self.indexed_through, self.next_seq
            )));
        }
        if let Some(s) = self.segments.iter().find(|s| s.seq <= self.indexed_through) {
            return Err(bad(format!(
                "segment {} (seq {}) is at or below indexedThrough {}: the indexer retired it",
                s.key, s.seq, self.indexed_through
            )));
        }
        Ok(())
    }
}

/// What a manifest commit must respect besides compare-and-swap.
#[derive(Clone, Copy, Debug)]
pub struct CommitRules<'a> {
    /// The index created every manifest at init: a missing one is
    /// corruption ([`CoordError::MissingManifest`]), never recreated.
    pub manifest_required: bool,
    /// When the committed segment(s) were PUT, by the committer's clock.
    pub written_at: SystemTime,
    /// The oldest they may be at commit time ([`Settings::commit_age_bound`]).
    pub age_bound: Duration,
    /// Retired entries older than this are dropped (GC deletes their
    /// objects as orphans); the GC grace period.
    pub retired_ttl: Duration,
    /// The store's "now" (see `coord::skew`) by which retired entries are
    /// pruned; `None`: this commit prunes nothing. Only the commits that
    /// retire (compaction, the indexer) prune, by the same clock their
    /// stamps come from, so no host's clock is judged against another's
    /// (issue 28 F11).
    pub prune_at: Option<SystemTime>,
    pub clock: &'a dyn Clock,
    pub backoff: Backoff,
}

impl<'a> CommitRules<'a> {
    /// The rules `settings` imply for segments PUT at `written_at`.
    pub fn new(
        settings: &Settings,
        written_at: SystemTime,
        clock: &'a dyn Clock,
        backoff: Backoff,
    ) -> Self {
        CommitRules {
            manifest_required: settings.partitions_initialized,
            written_at,
            age_bound: settings.commit_age_bound(),
            retired_ttl: settings.gc_grace(),
            prune_at: None,
            clock,
            backoff,
        }
    }

    /// These rules, pruning retired entries by `store_now`.
    pub fn pruning_at(self, store_now: SystemTime) -> Self {
        CommitRules {
            prune_at: Some(store_now),
            ..self
        }
    }

    /// Refuses a commit of `key` that comes too late (see
    /// [`Settings::commit_age_bound`]). A clock that went backwards counts
    /// as age zero.
    fn check_age(&self, key: &str) -> Result<(), CoordError> {
        self.check_age_of(key, self.written_at)
    }

    /// [`CommitRules::check_age`] for an object written at `written_at`.
    fn check_age_of(&self, key: &str, written_at: SystemTime) -> Result<(), CoordError> {
        if mutation::active(Mutation::NoAgeBound) {
            return Ok(());
        }
        let age = self
            .clock
            .now()
            .duration_since(written_at)
            .unwrap_or_default();
        if age > self.age_bound {
            return Err(CoordError::CommitTooLate {
                key: key.to_string(),
                age_s: age.as_secs(),
                bound_s: self.age_bound.as_secs(),
            });
        }
        Ok(())
    }

    /// Drops retired entries older than the grace period by the store's
    /// clock (none unless [`CommitRules::prune_at`] says when that is).
    fn prune_retired(&self, m: &mut Manifest) {
        let Some(now) = self.prune_at else {
            return;
        };
        m.retired.retain(|r| {
            parse_time(&r.retired_at)
                .and_then(|t| now.duration_since(t).ok())
                .is_none_or(|age| age <= self.retired_ttl)
        });
    }
}

/// The error for partition `p`'s missing manifest.
pub fn missing(partition: u32) -> CoordError {
    CoordError::MissingManifest {
        key: manifest_key(partition),
        partition,
    }
}

/// A manifest as found: a missing one is empty only in an index made
/// before manifests were created at init (`required` false); otherwise it
/// is [`CoordError::MissingManifest`].
pub(crate) fn found_or_empty(
    partition: u32,
    found: Option<Manifest>,
    required: bool,
) -> Result<Manifest, CoordError> {
    match found {
        Some(m) => Ok(m),
        None if required => Err(missing(partition)),
        None => Ok(Manifest::empty(partition)),
    }
}

/// Reads a partition's manifest for use (see [`found_or_empty`]).
pub(crate) async fn load_manifest(
    store: &dyn ObjectStore,
    partition: u32,
    required: bool,
) -> Result<(Manifest, Option<ETag>), CoordError> {
    let (found, etag) = match read_manifest(store, partition).await? {
        Some((m, etag)) => (Some(m), Some(etag)),
        None => (None, None),
    };
    Ok((found_or_empty(partition, found, required)?, etag))
}

/// Reads and validates a partition's manifest; `None` if it has none.
pub async fn read_manifest(
    store: &dyn ObjectStore,
    partition: u32,
) -> Result<Option<(Manifest, ETag)>, CoordError> {
    let found = cas::read_json::<Manifest>(store, &manifest_key(partition)).await?;
    if let Some((m, _)) = &found {
        m.validate(partition)?;
    }
    Ok(found)
}

/// Parses and validates manifest bytes (for readers holding bytes from a
/// conditional GET).
pub fn parse_manifest(partition: u32, bytes: &[u8]) -> Result<Manifest, CoordError> {
    let m: Manifest = cas::parse_json(&manifest_key(partition), bytes)?;
    m.validate(partition)?;
    Ok(m)
}

/// What [`append_segments`] did.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Appended {
    /// Each entry's seq, in the order given (0 for those in `late`).
    pub seqs: Vec<u64>,
    /// Entries not committed because they came later than the commit age
    /// bound (indexes into the entries given; see [`append_segments`]).
    pub late: Vec<usize>,
    pub attempts: u32,
    pub conflicts: u32,
    pub retries: u32,
    /// Some entry was found already committed (an earlier attempt's
    /// response was lost after the store applied it).
    pub already_committed: bool,
}

/// Commits `entries` (their `seq`s are assigned here, ascending in the
/// order given) to the partition's manifest in one compare-and-swap under
/// `rules`. Idempotent per segment key: an entry already committed (live,
/// or retired by a compaction since) is reported with its seq, whatever its
/// age, and not appended again. Each new entry obeys the commit age bound
/// by its own `createdAt` (or `rules.written_at` if that does not parse):
/// one that comes too late is left out and listed in [`Appended::late`],
/// and when every entry is, the call fails with
/// [`CoordError::CommitTooLate`].
pub(crate) async fn append_segments(
    store: &dyn ObjectStore,
    partition: u32,
    entries: &[SegmentEntry],
    rules: CommitRules<'_>,
) -> Result<Appended, CoordError> {
    let key = manifest_key(partition);
    let mut seqs = vec![0; entries.len()];
    let mut late = Vec::new();
    let mut found_any = false;
    let dedupe = !mutation::active(Mutation::NoDuplicateCheck);
    let updated = cas::update_json::<Manifest, _>(store, &key, rules.backoff, |current| {
        let mut m = found_or_empty(partition, current, rules.manifest_required)?;
        m.validate(partition)?;
        found_any = false;
        late.clear();
        let mut fresh = Vec::new();
        let mut too_late = None;
        for (i, entry) in entries.iter().enumerate() {
            if let Some(existing) = m.find(&entry.key).filter(|_| dedupe) {
                seqs[i] = existing.seq;
                found_any = true;
                continue;
            }
            // Committed, then compacted away before this retry: its records
            // are in the compaction's output. Appending it again would put an
            // old version above newer acknowledged writes.
            if let Some(retired) = m.retired.iter().find(|r| dedupe && r.key == entry.key) {
                seqs[i] = retired.seq.unwrap_or(0);
                found_any = true;
                continue;
            }
            let written_at = parse_time(&entry.created_at).unwrap_or(rules.written_at);
            if let Err(e) = rules.check_age_of(&entry.key, written_at) {
                seqs[i] = 0;
                late.push(i);
                too_late.get_or_insert(e);
                continue;
            }
            fresh.push(i);
        }
        if fresh.is_empty() {
            return match too_late {
                Some(e) if !found_any => Err(e),
                _ => Ok(Step::Keep(m)),
            };
        }
        rules.prune_retired(&mut m);
        for i in fresh {
            let mut e = entries[i].clone();
            if e.section.is_some() {
                m.version = m.version.max(SECTIONS_MANIFEST_VERSION);
            }
            e.seq = m.next_seq;
            seqs[i] = e.seq;
            m.next_seq += 1;
            m.segments.push(e);
        }
        Ok(Step::Write(m))
    })
    .await?;
    Ok(Appended {
        seqs,
        late,
        attempts: updated.attempts,
        conflicts: updated.conflicts,
        retries: updated.retries,
        already_committed: found_any,
    })
}

/// What [`replace_prefix`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Replaced {
    /// The outputs took the inputs' place; the inputs are retired.
    Replaced,
    /// The inputs are no longer the manifest's first entries (another
    /// compactor won); nothing was written.
    Superseded,
}

/// Commits a compaction: if `inputs` are still the first entries of the
/// partition's manifest, replaces them by `outputs` (each given the seq of
/// the newest input), keeps everything committed meanwhile, and moves the
/// inputs to `retired` stamped `retired_at`. A lost race re-reads and
/// rebases on whatever writers appended. The outputs obey the commit age
/// bound like a writer's segment; retired entries past the grace period
/// are pruned.
pub(crate) async fn replace_prefix(
    store: &dyn ObjectStore,
    partition: u32,
    inputs: &[SegmentEntry],
    outputs: &[SegmentEntry],
    retired_at: &str,
    rules: CommitRules<'_>,
) -> Result<Replaced, CoordError> {
    let key = manifest_key(partition);
    let seq = inputs.last().map_or(0, |e| e.seq);
    let mut superseded = false;
    let result = cas::update_json::<Manifest, _>(store, &key, rules.backoff, |cur| {
        let mut m = cur.ok_or_else(|| missing(partition))?;
        m.validate(partition)?;
        // Where the inputs start: 0, or (broken on purpose) anywhere.
        let start = if mutation::active(Mutation::CompactionBeyondPrefix) {
            let first = inputs.first().map(|i| i.key.as_str());
            m.segments
                .iter()
                .position(|s| Some(s.key.as_str()) == first)
                .unwrap_or(0)
        } else {
            0
        };
        let still_prefix = m.segments.len() >= start + inputs.len()
            && m.segments[start..]
                .iter()
                .zip(inputs)
                .all(|(s, i)| s.key == i.key);
        superseded = !still_prefix;
        if superseded {
            return Ok(Step::Keep(m));
        }
        if let Some(first) = outputs.first() {
            rules.check_age(&first.key)?;
        }
        rules.prune_retired(&mut m);
        let rest = m.segments.split_off(start + inputs.len());
        m.segments.truncate(start);
        let outs = outputs.iter().cloned().map(|mut e| {
            e.seq = seq;
            e
        });
        m.segments.extend(outs.chain(rest));
        m.retired.extend(inputs.iter().map(|i| RetiredEntry {
            key: i.key.clone(),
            retired_at: retired_at.to_string(),
            seq: Some(i.seq),
            section: i.section,
        }));
        Ok(Step::Write(m))
    })
    .await?;
    Ok(if superseded || !result.wrote {
        Replaced::Superseded
    } else {
        Replaced::Replaced
    })
}

/// Retires every segment of `partition` with seq <= `through` (now
/// covered by the index shards, DESIGN section 11) and records
/// `indexedThrough`. Run only after the index manifest with watermark
/// `through` is committed. Returns whether it changed the manifest
/// (false when an earlier run already did).
pub async fn retire_indexed(
    store: &dyn ObjectStore,
    partition: u32,
    through: u64,
    retired_at: &str,
    rules: CommitRules<'_>,
) -> Result<bool, CoordError> {
    let key = manifest_key(partition);
    let result = cas::update_json::<Manifest, _>(store, &key, rules.backoff, |cur| {
        let mut m = cur.ok_or_else(|| missing(partition))?;
        m.validate(partition)?;
        if m.indexed_through >= through {
            return Ok(Step::Keep(m));
        }
        if through >= m.next_seq {
            return Err(CoordError::Corrupt {
                key: key.clone(),
                reason: format!(
                    "the index manifest's watermark {through} is past this partition's nextSeq {}",
                    m.next_seq
                ),
                found: format!("manifest for partition {partition}"),
            });
        }
        rules.prune_retired(&mut m);
        let keep = m
            .segments
            .split_off(m.segments.partition_point(|s| s.seq <= through));
        let covered = std::mem::replace(&mut m.segments, keep);
        m.retired.extend(covered.into_iter().map(|s| RetiredEntry {
            key: s.key,
            retired_at: retired_at.to_string(),
            seq: Some(s.seq),
            section: s.section,
        }));
        m.indexed_through = through;
        Ok(Step::Write(m))
    })
    .await?;
    Ok(result.wrote)
}

/// Removes `gone` (objects GC deleted) from the partition's `retired` list.
pub(crate) async fn trim_retired(
    store: &dyn ObjectStore,
    partition: u32,
    gone: &std::collections::HashSet<&String>,
    backoff: Backoff,
) -> Result<(), CoordError> {
    let key = manifest_key(partition);
    cas::update_json::<Manifest, _>(store, &key, backoff, |cur| {
        let Some(mut m) = cur else {
            return Err(missing(partition));
        };
        let before = m.retired.len();
        m.retired.retain(|r| !gone.contains(&r.key));
        Ok(if m.retired.len() == before {
            Step::Keep(m)
        } else {
            Step::Write(m)
        })
    })
    .await?;
    Ok(())
}

/// What [`create_missing`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Initialized {
    /// Partitions whose empty manifest was created now.
    pub created: Vec<u32>,
    /// Partitions that hold segment objects but no manifest: left alone
    /// and reported (`shoal repair` rebuilds them), never papered over.
    pub stranded: Vec<Stranded>,
}

/// A partition with objects and no manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Stranded {
    pub partition: u32,
    pub key: String,
    pub objects: usize,
}

/// Creates the empty manifest of every partition that has none and holds
/// no object, nor a section of a batch object (one LIST of the manifests,
/// one of `vectors/`, a GET per batch object when some manifest is
/// missing, then a create-only PUT per such partition; a racing creator's
/// manifest is kept). A partition that holds
/// objects but no manifest is reported in [`Initialized::stranded`].
pub(crate) async fn create_missing(
    store: &dyn ObjectStore,
    partition_count: u32,
) -> Result<Initialized, CoordError> {
    let mut objects: BTreeMap<u32, (bool, usize)> = BTreeMap::new();
    for obj in store.list(MANIFESTS_PREFIX).await? {
        if let Some(p) = partition_of_manifest(&obj.key) {
            objects.entry(p).or_default().0 = true;
        }
    }
    let mut batches = Vec::new();
    for obj in store.list(VECTORS_PREFIX).await? {
        match partition_of_key(&obj.key) {
            Some(_) if is_batch_key(&obj.key) => batches.push(obj.key),
            Some(p) if obj.key != legacy_manifest_key(p) => objects.entry(p).or_default().1 += 1,
            _ => {}
        }
    }
    let lacking = (0..partition_count).any(|p| !objects.get(&p).is_some_and(|o| o.0));
    // Batch objects hold sections of several partitions: read which (only
    // when some partition has no manifest).
    for key in batches.iter().filter(|_| lacking) {
        let got = match store.get(key).await {
            Ok(got) => got,
            Err(StoreError::NotFound { .. }) => continue, // collected meanwhile
            Err(e) => return Err(e.into()),
        };
        match crate::segment::batch::decode_batch(key, &got.bytes) {
            Ok(sections) => {
                for s in sections {
                    objects.entry(s.partition).or_default().1 += 1;
                }
            }
            // It may hold any partition's records: none gets an empty
            // manifest while it is there (each is reported stranded).
            Err(e) => {
                tracing::error!(key, error = %e, "an unreadable batch object blocks creating missing manifests");
                for p in 0..partition_count {
                    objects.entry(p).or_default().1 += 1;
                }
            }
        }
    }
    let mut out = Initialized::default();
    for p in 0..partition_count {
        match objects.get(&p).copied().unwrap_or_default() {
            (true, _) => {}
            (false, 0) => {
                let bytes = serde_json::to_vec(&Manifest::empty(p)).expect("serializable");
                match store.put_if_absent(&manifest_key(p), bytes.into()).await {
                    Ok(_) => out.created.push(p),
                    Err(StoreError::AlreadyExists { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            (false, n) => out.stranded.push(Stranded {
                partition: p,
                key: manifest_key(p),
                objects: n,
            }),
        }
    }
    Ok(out)
}

/// The partition a key under `vectors/` belongs to, if any.
pub(crate) fn partition_of_key(key: &str) -> Option<u32> {
    let rest = key.strip_prefix(VECTORS_PREFIX)?;
    let (dir, _) = rest.split_once('/')?;
    let digits = dir.strip_prefix('p')?;
    if digits.len() < 3 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let p: u32 = digits.parse().ok()?;
    (partition_dir(p) == format!("{VECTORS_PREFIX}{dir}")).then_some(p)
}

/// Writes a rebuilt manifest for a partition that has none (create-only:
/// if a manifest appeared meanwhile, nothing is written and the error says
/// so). The one way a lost manifest comes back (`shoal repair`).
pub(crate) async fn restore(
    store: &dyn ObjectStore,
    manifest: &Manifest,
) -> Result<(), CoordError> {
    let p = manifest.partition;
    manifest.validate(p)?;
    let key = manifest_key(p);
    let bytes = serde_json::to_vec(manifest).expect("serializable");
    match store.put_if_absent(&key, bytes.into()).await {
        Ok(_) => Ok(()),
        Err(StoreError::AlreadyExists { .. }) => Err(CoordError::MissingSetting(format!(
            "{key} exists (it was created while the repair ran); nothing was written"
        ))),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;

    use crate::coord::clock::{format_time, ManualClock, SystemClock};

    fn rules(clock: &ManualClock, written_at: SystemTime) -> CommitRules<'_> {
        CommitRules {
            manifest_required: true,
            written_at,
            age_bound: Duration::from_secs(450),
            retired_ttl: Duration::from_secs(900),
            prune_at: Some(clock.now()),
            clock,
            backoff: Backoff::default(),
        }
    }

    async fn init(store: &MemoryStore) {
        assert_eq!(create_missing(store, 1).await.unwrap().created, vec![0]);
    }

    fn entry(key: &str) -> SegmentEntry {
        let stats = SegmentStats {
            records: 1,
            ..Default::default()
        };
        SegmentEntry::new(key.into(), stats, "t".into(), "w")
    }

    /// A commit whose manifest PUT was applied but whose response was lost
    /// is retried; if a compaction retired the segment in between, the
    /// retry must recognise it instead of appending the old segment again
    /// at a newer seq (where it would shadow newer acknowledged writes).
    #[tokio::test]
    async fn a_retried_commit_finds_its_segment_among_the_retired() {
        let store = MemoryStore::unique();
        init(&store).await;
        let clock = ManualClock::new(SystemClock.now());
        let b = rules(&clock, clock.now());
        let (s1, s2) = ("vectors/p000/1.seg", "vectors/p000/2.seg");
        append_segments(&store, 0, &[entry(s1)], b).await.unwrap();
        let second = append_segments(&store, 0, &[entry(s2)], b).await.unwrap();
        let (m, _) = read_manifest(&store, 0).await.unwrap().unwrap();
        let out = entry("vectors/p000/c.seg");
        let replaced = replace_prefix(&store, 0, &m.segments, &[out], "t", b)
            .await
            .unwrap();
        assert_eq!(replaced, Replaced::Replaced);
        // The retry of s2's commit (its first PUT landed, the answer was lost).
        let retry = append_segments(&store, 0, &[entry(s2)], b).await.unwrap();
        assert!(retry.already_committed, "{retry:?}");
        assert_eq!(
            retry.seqs, second.seqs,
            "the seq the segment was committed at"
        );
        let (m, _) = read_manifest(&store, 0).await.unwrap().unwrap();
        assert!(
            m.find(s2).is_none(),
            "a compacted segment must not come back: {:?}",
            m.segments
        );
        assert_eq!(m.segments.len(), 1);
    }

    /// Entries committed together each obey the age bound by their own
    /// creation time: a stale one is left out (and named), the others are
    /// appended, and one found already committed is never refused.
    #[tokio::test]
    async fn one_late_entry_does_not_refuse_the_others() {
        let store = MemoryStore::unique();
        init(&store).await;
        let clock = ManualClock::new(SystemClock.now());
        let at = |ago: u64| format_time(clock.now() - Duration::from_secs(ago));
        let with_time = |key: &str, t: String| SegmentEntry {
            created_at: t,
            ..entry(key)
        };
        let landed = with_time("vectors/p000/old.seg", at(10));
        append_segments(
            &store,
            0,
            std::slice::from_ref(&landed),
            rules(&clock, clock.now()),
        )
        .await
        .unwrap();
        let entries = [
            landed,
            with_time("vectors/p000/stale.seg", at(451)),
            with_time("vectors/p000/fresh.seg", at(1)),
        ];
        clock.advance(Duration::from_secs(445));
        let a = append_segments(&store, 0, &entries, rules(&clock, clock.now()))
            .await
            .unwrap();
        assert_eq!(a.late, vec![1], "{a:?}");
        assert!(a.already_committed);
        let (m, _) = read_manifest(&store, 0).await.unwrap().unwrap();
        let keys: Vec<&str> = m.segments.iter().map(|s| s.key.as_str()).collect();
        assert_eq!(keys, ["vectors/p000/old.seg", "vectors/p000/fresh.seg"]);
        // Only late entries: refused as before.
        let e = append_segments(&store, 0, &entries[1..2], rules(&clock, clock.now()))
            .await
            .unwrap_err();
        assert!(matches!(e, CoordError::CommitTooLate { .. }), "{e}");
    }

    /// A writer paused between its segment PUT and its commit for longer
    /// than the age bound must not commit: GC (a whole grace period, by the
    /// store's clock) may already have deleted the segment. An earlier
    /// attempt that did land is still recognised, however old.
    #[tokio::test]
    async fn a_commit_past_the_age_bound_is_refused_and_changes_nothing() {
        let store = MemoryStore::unique();
        init(&store).await;
        let clock = ManualClock::new(SystemClock.now());
        let t0 = clock.now();
        let landed = append_segments(&store, 0, &[entry("vectors/p000/1.seg")], rules(&clock, t0))
            .await
            .unwrap();
        let (before, _) = read_manifest(&store, 0).await.unwrap().unwrap();
        clock.advance(Duration::from_secs(451));
        let e = append_segments(&store, 0, &[entry("vectors/p000/2.seg")], rules(&clock, t0))
            .await
            .unwrap_err();
        assert!(matches!(e, CoordError::CommitTooLate { .. }), "{e}");
        assert!(e.is_retryable(), "the caller sends the data again");
        assert!(e.to_string().contains("vectors/p000/2.seg"), "{e}");
        let (after, _) = read_manifest(&store, 0).await.unwrap().unwrap();
        assert_eq!(after, before, "nothing committed");
        // The retry of a commit that did land long ago is still success.
        let again = append_segments(&store, 0, &[entry("vectors/p000/1.seg")], rules(&clock, t0))
            .await
            .unwrap();
        assert!(again.already_committed && again.seqs == landed.seqs);
        // Within the bound it commits.
        let fresh = rules(&clock, clock.now() - Duration::from_secs(449));
        append_segments(&store, 0, &[entry("vectors/p000/3.seg")], fresh)
            .await
            .unwrap();
        // A compaction's outputs obey the same bound.
        let (m, _) = read_manifest(&store, 0).await.unwrap().unwrap();
        let late = replace_prefix(
            &store,
            0,
            &m.segments,
            &[entry("vectors/p000/c.seg")],
            &format_time(clock.now()),
            rules(&clock, t0),
        )
        .await
        .unwrap_err();
        assert!(matches!(late, CoordError::CommitTooLate { .. }), "{late}");
    }

    /// Retired entries live one grace period, then the next commit drops
    /// them, so a manifest stays small between GC runs.
    #[tokio::test]
    async fn retired_entries_past_the_grace_are_pruned() {
        let store = MemoryStore::unique();
        init(&store).await;
        let clock = ManualClock::new(SystemClock.now());
        for round in 0..3 {
            for i in 0..4 {
                let key = format!("vectors/p000/{round}-{i}.seg");
                append_segments(&store, 0, &[entry(&key)], rules(&clock, clock.now()))
                    .await
                    .unwrap();
            }
            let (m, _) = read_manifest(&store, 0).await.unwrap().unwrap();
            let out = entry(&format!("vectors/p000/{round}-c.seg"));
            replace_prefix(
                &store,
                0,
                &m.segments,
                &[out],
                &format_time(clock.now()),
                rules(&clock, clock.now()),
            )
            .await
            .unwrap();
            clock.advance(Duration::from_secs(500));
        }
        let (m, _) = read_manifest(&store, 0).await.unwrap().unwrap();
        // Retired at 0 s (0-0..0-3), 500 s (0-c, 1-0..1-3) and 1000 s
        // (1-c, 2-0..2-3); the 1000 s commit pruned the first batch.
        let retired: Vec<&str> = m.retired.iter().map(|r| r.key.as_str()).collect();
        let name = |k: &&str| k.trim_start_matches("vectors/p000/").to_string();
        let names: Vec<String> = retired.iter().map(name).collect();
        let want = [
            "0-c", "1-0", "1-1", "1-2", "1-3", "1-c", "2-0", "2-1", "2-2", "2-3",
        ];
        let want: Vec<String> = want.iter().map(|n| format!("{n}.seg")).collect();
        assert_eq!(names, want);
        assert_eq!(m.segments.len(), 1);
    }
}
