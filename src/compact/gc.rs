//! Garbage collection: delete what no manifest needs any more.
//!
//! GC is the only place shoal LISTs (`vectors/`). An object is deleted when
//! - it is in a manifest's `retired` list and was retired longer than the
//!   grace period ago (then the entry is removed too), or
//! - no manifest references or retires it and it was last written longer
//!   than the grace period ago (an orphan from a crashed writer or a
//!   compactor that lost its race).
//!
//! The grace period is the config's `gcGraceSeconds` (default 15 min). It
//! must exceed the longest reader staleness plus the longest query: a
//! reader holding a manifest from before a compaction can still fetch the
//! segments it names. Writers never commit a segment older than half of it
//! (by their own wall clock), and GC judges age by the store's object
//! timestamps, so a writer between its segment PUT and its manifest commit
//! is never robbed, however long it was paused. Nor by a GC host whose
//! clock runs ahead of the store's: GC reads the store's clock back from a
//! scratch object and moves its own "now" back by the lead.
//! A grace below the config's (or below [`MIN_SAFE_GRACE`], 5 min) is
//! refused unless the caller says it knows nothing else is running
//! (`allow_unsafe_grace`, `shoal gc --unsafe-grace`); a dry run deletes
//! nothing and may use any.
//! GC also removes instance records whose heartbeat timed out.
//!
//! The index shards (`index/`, DESIGN section 11) follow the same rules
//! through the index manifest: shards and deletion vectors it lists are
//! kept, the ones in its `retired` list go after the grace period, and
//! unreferenced ones (a losing indexer's) once older than it. Without an
//! index manifest nothing under `index/` is deleted.
//!
//! A partition whose manifest is missing is left alone entirely: its
//! objects may be the only copy of acknowledged data (`shoal repair`
//! rebuilds the manifest from them), so GC deletes nothing under it, nor
//! any batch object (which may hold its sections, see `paths::is_batch_key`), and
//! reports it in [`GcReport::missing_manifests`].
//!
//! A batch object holds sections of several partitions: it is kept while
//! any manifest references it or retired it within the grace period.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::coord::cas::Backoff;
use crate::coord::clock::{parse_time, DynClock};
use crate::coord::index_manifest::{read_index_manifest, trim_index_retired};
use crate::coord::instance;
use crate::coord::manifest::{partition_of_key, read_manifest, trim_retired};
use crate::coord::paths::{
    is_batch_key, legacy_manifest_key, manifest_key, partition_of_manifest, INDEX_MANIFEST_KEY,
    INDEX_PREFIX, LEGACY_INDEX_MANIFEST_KEY, VECTORS_PREFIX,
};
use crate::coord::{CoordError, Settings};
use crate::store::ObjectStore;

pub const DEFAULT_GRACE: Duration =
    Duration::from_secs(crate::coord::config::DEFAULT_GC_GRACE_SECONDS);
/// The shortest grace GC accepts on its own: below it, GC could delete a
/// segment a briefly paused writer is about to commit, or one a reader
/// holding an older manifest is fetching.
pub const MIN_SAFE_GRACE: Duration = Duration::from_secs(5 * 60);

#[derive(Clone, Debug, Default)]
pub struct GcOptions {
    /// The grace period; `None` is the config's `gcGraceSeconds`.
    pub grace: Option<Duration>,
    /// Report what would be deleted without deleting anything.
    pub dry_run: bool,
    /// Accept a grace below the config's `gcGraceSeconds` or below
    /// [`MIN_SAFE_GRACE`] (only safe when no writer or reader is running
    /// against the bucket).
    pub allow_unsafe_grace: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct GcReport {
    /// Objects deleted (or, with `dry_run`, that would be).
    pub deleted: Vec<String>,
    /// Unreferenced objects kept because they are younger than the grace.
    pub kept_young: usize,
    /// Retired objects kept because they were retired within the grace
    /// (a later run deletes them).
    #[serde(default)]
    pub retired_waiting: usize,
    /// The grace period used, in seconds.
    pub grace_seconds: u64,
    pub stale_instances: Vec<String>,
    /// Manifests found missing; nothing under their partitions was deleted.
    pub missing_manifests: Vec<String>,
    /// Manifests that could not be read (corrupt): GC worked everywhere
    /// else and deleted nothing they govern (issue 28 F5).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unreadable: Vec<String>,
    pub dry_run: bool,
}

impl GcReport {
    /// Nothing deleted and nothing waiting for the grace to pass: until a
    /// manifest changes, a run finds only orphans written meanwhile by a
    /// writer that died before committing (see `schedule::gc_check`).
    pub fn settled(&self) -> bool {
        self.deleted.is_empty()
            && self.kept_young == 0
            && self.retired_waiting == 0
            && self.stale_instances.is_empty()
            && self.missing_manifests.is_empty()
            && self.unreadable.is_empty()
    }
}

pub async fn gc(
    store: &dyn ObjectStore,
    settings: &Settings,
    clock: &DynClock,
    opts: &GcOptions,
) -> Result<GcReport, CoordError> {
    let grace = checked_grace(settings, opts)?;
    let now = gc_now(store, clock).await?;
    let age = Age { now, grace };
    let mut needed = Needed::default();
    // Manifests first, then the listing: anything committed after we read
    // a manifest is young, and the grace protects it.
    read_partition_manifests(store, settings, &age, &mut needed).await?;
    // The index manifest after the partitions: a shard it commits later is
    // young (the indexer commits within the age bound).
    read_index_manifest_keys(store, settings, &age, &mut needed).await?;
    let mut report = GcReport {
        dry_run: opts.dry_run,
        grace_seconds: grace.as_secs(),
        retired_waiting: needed.retired_waiting,
        ..Default::default()
    };
    let stranded = sweep(store, settings, &needed, &age, &mut report).await?;
    if !opts.dry_run {
        delete_and_trim(store, settings, &needed, &report.deleted).await?;
    }
    report.stale_instances = stale_instances(store, settings, now, opts.dry_run).await?;
    let unreadable: HashSet<u32> = needed
        .unreadable
        .iter()
        .filter_map(|k| partition_of_manifest(k))
        .collect();
    let missing: HashSet<u32> = needed
        .untouchable
        .difference(&unreadable)
        .copied()
        .collect();
    report_missing_manifests(&mut report, settings, &missing, &stranded);
    report.unreadable = needed.unreadable;
    report.deleted.sort();
    Ok(report)
}

/// The grace period to use: the asked-for one, refused when unsafe and not
/// explicitly allowed.
fn checked_grace(settings: &Settings, opts: &GcOptions) -> Result<Duration, CoordError> {
    let grace = opts.grace.unwrap_or_else(|| settings.gc_grace());
    let safe = settings.gc_grace().max(MIN_SAFE_GRACE);
    if grace < safe && !opts.allow_unsafe_grace && !opts.dry_run {
        return Err(CoordError::InvalidSetting {
            setting: "gc grace period",
            value: format!("{} s", grace.as_secs()),
            expected: format!(
                "at least {} s (the index's gcGraceSeconds): a shorter one can delete a \
                 segment that a paused writer is about to commit or that a reader is fetching; \
                 pass --unsafe-grace only when no writer or reader is running against the bucket",
                safe.as_secs()
            ),
        });
    }
    if crate::mutation::active(crate::mutation::Mutation::GcIgnoresGrace) {
        return Ok(Duration::ZERO);
    }
    Ok(grace)
}

/// GC's "now": the store's, measured afresh on every run
/// (`coord::skew`), since ages are the store's timestamps and retirements
/// are stamped by the store's clock. A host ahead of the store would
/// otherwise see young objects as old and delete them. A dry run measures
/// too, so its preview lists what a real run would delete (its one write
/// is the scratch probe object, nothing of the index).
async fn gc_now(store: &dyn ObjectStore, clock: &DynClock) -> Result<SystemTime, CoordError> {
    let skew = crate::coord::skew::measure(store, clock.as_ref()).await?;
    Ok(skew.apply(clock.now()))
}

/// Judges whether an object (or a retirement) is past the grace period.
struct Age {
    now: SystemTime,
    grace: Duration,
}

impl Age {
    /// True when `t` is known and older than the grace.
    fn old_enough(&self, t: Option<SystemTime>) -> bool {
        t.and_then(|t| self.now.duration_since(t).ok())
            .is_some_and(|age| age > self.grace)
    }
}

/// What the manifests say about the objects GC will list.
#[derive(Default)]
struct Needed {
    /// Referenced, or retired too recently to go.
    keep: HashSet<String>,
    /// Per partition, retired keys past the grace (their entries are
    /// trimmed, partition by partition in order: a hash map's order would
    /// differ from run to run, and with it which trim meets a writer's
    /// commit first, which a seeded simulation must replay exactly).
    expired: BTreeMap<u32, Vec<String>>,
    /// Retired index keys past the grace (their entries are trimmed).
    index_expired: Vec<String>,
    /// Partitions whose manifest is missing: nothing under them is deleted.
    untouchable: HashSet<u32>,
    /// Retired keys kept because they were retired too recently.
    retired_waiting: usize,
    /// Whether an index manifest exists (without one, `index/` is not listed).
    has_index: bool,
    /// Manifests that could not be read (nothing they govern is deleted).
    unreadable: Vec<String>,
}

/// A manifest as GC reads it: found, missing, or corrupt (logged and
/// recorded in `needed`, so GC goes on everywhere else).
fn readable<T>(
    key: &str,
    found: Result<Option<T>, CoordError>,
    needed: &mut Needed,
) -> Result<Option<Option<T>>, CoordError> {
    match found {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == crate::vocab::ErrorKind::Corrupt => {
            tracing::error!(
                key,
                error = %e,
                "gc cannot read this manifest: nothing it governs is deleted; see `shoal verify`"
            );
            needed.unreadable.push(key.to_string());
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Reads every partition manifest into `needed`: kept, expired and untouchable keys.
async fn read_partition_manifests(
    store: &dyn ObjectStore,
    settings: &Settings,
    age: &Age,
    needed: &mut Needed,
) -> Result<(), CoordError> {
    for p in 0..settings.partition_count {
        let key = manifest_key(p);
        needed.keep.insert(key.clone());
        // Its moved marker stops older shoal versions (see `layout`).
        needed.keep.insert(legacy_manifest_key(p));
        let Some(found) = readable(&key, read_manifest(store, p).await, needed)? else {
            needed.untouchable.insert(p); // corrupt: reported as unreadable
            continue;
        };
        let Some((m, _)) = found else {
            needed.untouchable.insert(p);
            continue;
        };
        needed.keep.extend(m.segments.iter().map(|s| s.key.clone()));
        for r in &m.retired {
            if age.old_enough(parse_time(&r.retired_at)) {
                needed.expired.entry(p).or_default().push(r.key.clone());
            } else {
                needed.keep.insert(r.key.clone());
                needed.retired_waiting += 1;
            }
        }
    }
    Ok(())
}

/// Reads the index manifest into `needed`: its shards and deletion vectors
/// are kept, its retired keys kept or expired by age.
async fn read_index_manifest_keys(
    store: &dyn ObjectStore,
    settings: &Settings,
    age: &Age,
    needed: &mut Needed,
) -> Result<(), CoordError> {
    let found = read_index_manifest(store, settings.partition_count).await;
    let Some(Some((m, _))) = readable(INDEX_MANIFEST_KEY, found, needed)? else {
        return Ok(()); // missing, or unreadable: `index/` is not listed
    };
    needed.has_index = true;
    needed.keep.insert(INDEX_MANIFEST_KEY.to_string());
    needed.keep.insert(LEGACY_INDEX_MANIFEST_KEY.to_string());
    for s in &m.shards {
        needed.keep.insert(s.key.clone());
        needed.keep.extend(s.deletions.iter().cloned());
    }
    for r in &m.routings {
        needed.keep.insert(r.key.clone());
    }
    for r in &m.retired {
        if age.old_enough(parse_time(&r.retired_at)) {
            needed.index_expired.push(r.key.clone());
        } else {
            needed.keep.insert(r.key.clone());
            needed.retired_waiting += 1;
        }
    }
    Ok(())
}

/// Lists the bucket and sorts each object into deleted or kept young in
/// `report`; returns the untouchable partitions that hold objects.
async fn sweep(
    store: &dyn ObjectStore,
    settings: &Settings,
    needed: &Needed,
    age: &Age,
    report: &mut GcReport,
) -> Result<HashSet<u32>, CoordError> {
    let expired_keys: HashSet<&String> = needed
        .expired
        .values()
        .flatten()
        .chain(needed.index_expired.iter())
        .collect();
    let mut stranded: HashSet<u32> = HashSet::new();
    let mut listed = store.list(VECTORS_PREFIX).await?;
    if needed.has_index {
        listed.extend(store.list(INDEX_PREFIX).await?);
    } else if settings.partitions_initialized
        && !needed.unreadable.iter().any(|k| k == INDEX_MANIFEST_KEY)
    {
        report
            .missing_manifests
            .push(INDEX_MANIFEST_KEY.to_string());
    }
    for obj in listed {
        if needed.keep.contains(&obj.key) {
            continue;
        }
        if let Some(p) = partition_of_key(&obj.key).filter(|p| needed.untouchable.contains(p)) {
            stranded.insert(p);
            continue;
        }
        // A batch object may hold the only copy of a partition without a
        // readable manifest: none goes while any partition is untouchable.
        if is_batch_key(&obj.key) && !needed.untouchable.is_empty() {
            continue;
        }
        if expired_keys.contains(&obj.key) || age.old_enough(obj.last_modified) {
            report.deleted.push(obj.key);
        } else {
            report.kept_young += 1;
        }
    }
    Ok(stranded)
}

/// Deletes the chosen objects, then drops the expired entries from the
/// partition manifests' and the index manifest's `retired` lists.
async fn delete_and_trim(
    store: &dyn ObjectStore,
    settings: &Settings,
    needed: &Needed,
    deleted: &[String],
) -> Result<(), CoordError> {
    for key in deleted {
        store.delete(key).await?;
    }
    for (p, keys) in &needed.expired {
        let gone: HashSet<&String> = keys.iter().collect();
        trim_retired(store, *p, &gone, Backoff::default()).await?;
    }
    if !needed.index_expired.is_empty() {
        let gone: HashSet<&String> = needed.index_expired.iter().collect();
        trim_index_retired(store, settings.partition_count, &gone, Backoff::default()).await?;
    }
    Ok(())
}

/// The instances whose heartbeat timed out: removed, or on a dry run only listed.
async fn stale_instances(
    store: &dyn ObjectStore,
    settings: &Settings,
    now: SystemTime,
    dry_run: bool,
) -> Result<Vec<String>, CoordError> {
    let timeout = Duration::from_secs(settings.instance_timeout_seconds);
    Ok(if dry_run {
        instance::list_records(store)
            .await?
            .into_iter()
            .filter(|r| !r.is_alive(now, timeout))
            .map(|r| r.instance_id)
            .collect()
    } else {
        instance::remove_stale(store, now, timeout, "").await?
    })
}

/// Adds the missing partition manifests that matter (all once the index is
/// initialized, else those with stranded objects) to `report`, and logs each.
fn report_missing_manifests(
    report: &mut GcReport,
    settings: &Settings,
    untouchable: &HashSet<u32>,
    stranded: &HashSet<u32>,
) {
    report.missing_manifests.extend(
        untouchable
            .iter()
            .copied()
            .filter(|p| settings.partitions_initialized || stranded.contains(p))
            .map(manifest_key),
    );
    report.missing_manifests.sort();
    for key in &report.missing_manifests {
        tracing::error!(
            manifest = %key,
            "partition manifest is missing: gc left its partition alone; run `shoal repair`"
        );
    }
}
