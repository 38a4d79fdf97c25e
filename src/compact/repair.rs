//! `shoal repair PARTITION`: rebuilds a lost partition manifest from the
//! segments still under the partition, so data whose manifest was deleted
//! stays recoverable.
//!
//! The segments are ordered by their commit metadata: the time their
//! writer created them (header `createdAtMs`, then the key). That order is
//! the commit order whenever it matters and can be known:
//! - segments of one writer commit in creation order (a writer commits a
//!   partition's segments one at a time, under a lock, and the sections of
//!   batch objects that wait together in order of creation; two concurrent
//!   calls of one process writing one id, where a batch object created
//!   earlier finished its PUT later, are the exception: such calls have no
//!   order of their own, and repair keeps the creation order);
//! - segments of different writers created further apart than the commit
//!   age bound plus a minute of clock skew commit in creation order (a
//!   segment is committed within the bound or never);
//! - segments that share no id, or hold identical records for every id
//!   they share, may go in either order.
//!
//! What cannot be ordered for certain is reported and nothing is written,
//! never guessed silently:
//! - two segments of different writers created within that window hold
//!   different records for one id;
//! - a compaction output has segments created before it: each is either one
//!   of its inputs (retired, and must stay out: the output already dropped
//!   what it deleted) or a commit that came after the compaction read the
//!   manifest (and must go above it), and nothing left in the bucket says
//!   which.
//!
//! A segment that a writer PUT and then crashed before committing cannot be
//! told from a committed one (a writer whose commit is refused deletes its
//! segment, but a crash leaves it): repair includes it, so a write that was
//! never acknowledged may come back with the partition. Run it before GC
//! has had a chance to remove such orphans and it keeps everything that was
//! acknowledged, which is what matters.
//!
//! With `force` the creation order is written anyway and the report keeps
//! the list of what was guessed. Unreadable segments are reported the same
//! way (left out only with `force`).

use std::collections::HashMap;
use std::time::Duration;

use serde::Serialize;

use super::CompactError;
use crate::coord::clock::format_time;
use crate::coord::index_manifest::read_index_manifest;
use crate::coord::manifest::{
    partition_of_key, read_manifest, restore, Manifest, Section, SegmentEntry, SegmentStats,
    SECTIONS_MANIFEST_VERSION,
};
use crate::coord::paths::{
    is_batch_key, legacy_manifest_key, manifest_key, partition_dir, segment_origin, SegmentOrigin,
    VECTORS_PREFIX,
};
use crate::coord::{CoordError, Settings};
use crate::segment::{self, Segment, Shape};
use crate::store::ObjectStore;

/// Allowance for clocks of different writers disagreeing.
const CLOCK_SKEW: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, Default)]
pub struct RepairOptions {
    /// Report what would be written, write nothing.
    pub dry_run: bool,
    /// Write the creation order even where it is not certain, leaving
    /// unreadable segments out.
    pub force: bool,
}

/// What `repair` found and did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RepairReport {
    pub partition: u32,
    pub manifest: String,
    /// The rebuilt manifest's segments, oldest first (as written, or as
    /// they would be).
    pub segments: Vec<SegmentEntry>,
    /// Segments that could not be read (key, error).
    pub unreadable: Vec<(String, String)>,
    /// Orders that could not be established for certain.
    pub uncertain: Vec<String>,
    /// Whether the manifest was written.
    pub written: bool,
    /// Why nothing was written, when repair refused (a dry run is not a
    /// refusal).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
    pub dry_run: bool,
}

/// Rebuilds partition `partition`'s missing manifest (see the module docs).
/// Refuses a partition that has a manifest.
pub async fn repair(
    store: &dyn ObjectStore,
    settings: &Settings,
    partition: u32,
    opts: RepairOptions,
) -> Result<RepairReport, CompactError> {
    let key = check_repairable(store, settings, partition).await?;
    let shape = Shape {
        dimensions: settings.dimensions as usize,
        metric: settings.metric(),
    };
    let mut report = RepairReport {
        partition,
        manifest: key.clone(),
        dry_run: opts.dry_run,
        ..Default::default()
    };
    let dir = format!("{}/", partition_dir(partition));
    let (segments, sections) = load_segments(store, partition, &dir, shape, &mut report).await?;
    let window = settings.commit_age_bound() + CLOCK_SKEW;
    report.uncertain = uncertain_orders(&segments, window);
    // Seqs start above the index watermark: whatever was indexed from this
    // partition is in the shards, and every segment found becomes tail,
    // newer than the shards (a seq at or below W[p] would be ignored by
    // readers, and so would the next commits).
    let watermark = match read_index_manifest(store, settings.partition_count).await? {
        Some((m, _)) => m.watermark(partition),
        None => 0,
    };
    let manifest = rebuilt_manifest(partition, watermark, &segments, &sections);
    report.segments = manifest.segments.clone();
    report.refused = refusal(&report, opts, watermark, !segments.is_empty(), &dir);
    if report.refused.is_none() && !opts.dry_run {
        restore(store, &manifest).await?;
        report.written = true;
        tracing::warn!(
            manifest = %key,
            segments = manifest.segments.len(),
            guessed = report.uncertain.len(),
            "rebuilt a lost partition manifest"
        );
    }
    Ok(report)
}

/// Refuses a partition outside the index or one whose manifest exists;
/// returns the manifest's key.
async fn check_repairable(
    store: &dyn ObjectStore,
    settings: &Settings,
    partition: u32,
) -> Result<String, CompactError> {
    if partition >= settings.partition_count {
        return Err(CoordError::InvalidSetting {
            setting: "partition",
            value: partition.to_string(),
            expected: format!(
                "a partition of this index, 0 to {}",
                settings.partition_count - 1
            ),
        }
        .into());
    }
    let key = manifest_key(partition);
    if read_manifest(store, partition).await?.is_some() {
        return Err(CoordError::MissingSetting(format!(
            "{key} exists: repair only rebuilds a missing manifest (run `shoal verify` to check \
             this one)"
        ))
        .into());
    }
    Ok(key)
}

/// Where the partition's section lies in each batch object that has one.
type Sections = HashMap<String, Section>;

/// Every readable segment under the partition's directory `dir`, and the
/// partition's section of every batch object, in creation order; what
/// cannot be read goes to `report.unreadable`.
async fn load_segments(
    store: &dyn ObjectStore,
    partition: u32,
    dir: &str,
    shape: Shape,
    report: &mut RepairReport,
) -> Result<(Vec<(String, Segment)>, Sections), CompactError> {
    let mut segments = Vec::new();
    let mut sections = Sections::new();
    // Batch objects sit in the folder of the first partition they hold a
    // section of: any of them may hold one of this partition's.
    let batches = store.list(VECTORS_PREFIX).await?;
    for obj in batches.into_iter().filter(|o| is_batch_key(&o.key)) {
        let found = match store.get(&obj.key).await {
            Ok(got) => batch_section(&obj.key, &got.bytes, partition, shape),
            Err(e) if e.is_retryable() => return Err(CoordError::from(e).into()),
            Err(e) => Err(e.into()),
        };
        match found {
            Ok(None) => {}
            Ok(Some((section, seg))) => {
                sections.insert(obj.key.clone(), section);
                segments.push((obj.key, seg));
            }
            Err(e) => report.unreadable.push((obj.key, e.to_string())),
        }
    }
    for obj in store.list(dir).await? {
        if obj.key == legacy_manifest_key(partition) {
            continue; // the moved marker of an older layout (see `coord::layout`)
        }
        if is_batch_key(&obj.key) {
            continue; // read above, with every other batch object
        }
        if partition_of_key(&obj.key) != Some(partition) || !obj.key.ends_with(".seg") {
            report.unreadable.push((obj.key, "not a segment".into()));
            continue;
        }
        match segment::load(store, &obj.key, shape).await {
            Ok(seg) => segments.push((obj.key, seg)),
            Err(e) if e.is_retryable() => return Err(e.into()),
            Err(e) => report.unreadable.push((obj.key, e.to_string())),
        }
    }
    segments.sort_by(|(ka, a), (kb, b)| {
        (a.header().created_at_ms, ka).cmp(&(b.header().created_at_ms, kb))
    });
    Ok((segments, sections))
}

/// The partition's section of the batch object `buf`, if it has one.
fn batch_section(
    key: &str,
    buf: &[u8],
    partition: u32,
    shape: Shape,
) -> Result<Option<(Section, Segment)>, segment::LoadError> {
    let dir = segment::batch::decode_batch(key, buf)?;
    let Some(s) = dir.iter().find(|s| s.partition == partition) else {
        return Ok(None);
    };
    let seg = segment::decode_section(key, buf, (s.offset, s.length), shape)?;
    let section = Section {
        offset: s.offset,
        length: s.length,
        object_bytes: Some(buf.len() as u64),
    };
    Ok(Some((section, seg)))
}

/// The manifest listing `segments` in order, with seqs from just above the
/// index watermark.
fn rebuilt_manifest(
    partition: u32,
    watermark: u64,
    segments: &[(String, Segment)],
    sections: &Sections,
) -> Manifest {
    let mut manifest = Manifest::empty(partition);
    manifest.next_seq = watermark + 1;
    manifest.indexed_through = watermark;
    for (key, seg) in segments {
        let h = seg.header();
        let stats = SegmentStats {
            records: seg.len() as u64,
            tombstones: seg.tombstone_count() as u64,
            bytes: seg.stored_bytes(),
            indexed: h.has_index,
        };
        let at = std::time::UNIX_EPOCH + Duration::from_millis(h.created_at_ms);
        let mut entry = SegmentEntry::new(key.clone(), stats, format_time(at), &h.writer_id);
        entry.section = sections.get(key).copied();
        if entry.section.is_some() {
            manifest.version = manifest.version.max(SECTIONS_MANIFEST_VERSION);
        }
        entry.seq = manifest.next_seq;
        manifest.next_seq += 1;
        manifest.segments.push(entry);
    }
    manifest
}

/// Why the rebuilt manifest must not be written without `force`, if it must not.
fn refusal(
    report: &RepairReport,
    opts: RepairOptions,
    watermark: u64,
    found_segments: bool,
    dir: &str,
) -> Option<String> {
    if !opts.force && !report.uncertain.is_empty() {
        Some(format!(
            "the commit order of {} pair(s) of segments is not certain (listed); nothing was \
             written. Remove the segments that must not come back (never a batch object, \
             `-b` in its name: it holds other partitions' records too), or pass --force to \
             accept the creation order shown",
            report.uncertain.len()
        ))
    } else if !opts.force && watermark > 0 && found_segments {
        Some(format!(
            "the index shards cover this partition through seq {watermark}, and the segments \
             found may include ones the indexer already retired (and older versions a \
             compaction replaced): listed as tail they would hide the shards' newer rows; \
             nothing was written. Remove the segments that must not come back, or pass --force \
             to list them all as newer than the shards"
        ))
    } else if !opts.force && !report.unreadable.is_empty() {
        Some(format!(
            "{} object(s) under {dir} could not be read (listed); nothing was written. Pass \
             --force to rebuild without them",
            report.unreadable.len()
        ))
    } else {
        None
    }
}

fn is_compaction_output(key: &str) -> bool {
    segment_origin(key) == Some(SegmentOrigin::Compaction)
}

/// Pairs of `segments` (sorted by creation) whose commit order matters and
/// cannot be known (see the module docs), described.
fn uncertain_orders(segments: &[(String, Segment)], window: Duration) -> Vec<String> {
    let mut out = Vec::new();
    let window_ms = window.as_millis() as u64;
    for (i, (key, seg)) in segments.iter().enumerate() {
        if !is_compaction_output(key) {
            continue;
        }
        let at = seg.header().created_at_ms;
        for (older, o) in &segments[..i] {
            let sibling = is_compaction_output(older)
                && o.header().created_at_ms == at
                && o.header().writer_id == seg.header().writer_id;
            if !sibling {
                out.push(format!(
                    "{older} was written before compaction output {key}: it is either one of \
                     the output's inputs (must stay out) or committed after it (must go above it)"
                ));
            }
        }
    }
    // id -> (segment, position of its last record there)
    let mut by_id: HashMap<&str, Vec<(usize, usize)>> = HashMap::new();
    for (s, (_, seg)) in segments.iter().enumerate() {
        let mut last: HashMap<&str, usize> = HashMap::new();
        for (i, id) in seg.ids().iter().enumerate() {
            last.insert(id.as_str(), i);
        }
        for (id, i) in last {
            by_id.entry(id).or_default().push((s, i));
        }
    }
    let mut pairs: std::collections::BTreeMap<(usize, usize), String> = Default::default();
    for (id, places) in by_id {
        for (x, &(a, ia)) in places.iter().enumerate() {
            for &(b, ib) in &places[x + 1..] {
                let (sa, sb) = (&segments[a].1, &segments[b].1);
                let (ha, hb) = (sa.header(), sb.header());
                let apart = ha.created_at_ms.abs_diff(hb.created_at_ms);
                let one_writer = ha.writer_id == hb.writer_id && apart > 0;
                if one_writer || apart > window_ms || same_record(sa, ia, sb, ib) {
                    continue;
                }
                pairs.entry((a.min(b), a.max(b))).or_insert_with(|| {
                    format!(
                        "{} and {} (writers {} and {}, written {apart} ms apart) hold different \
                         versions of id {id:?}",
                        segments[a.min(b)].0,
                        segments[a.max(b)].0,
                        ha.writer_id,
                        hb.writer_id
                    )
                });
            }
        }
    }
    out.extend(pairs.into_values());
    out
}

fn same_record(a: &Segment, i: usize, b: &Segment, j: usize) -> bool {
    a.is_tombstone(i) == b.is_tombstone(j)
        && a.vector(i) == b.vector(j)
        && a.metadata_raw(i) == b.metadata_raw(j)
}
