//! Partition manifests `vectors/pNNN/manifest.json`: the committed segment
//! list of one partition (DESIGN section 6).
//!
//! Idempotence covers compaction too: a retried append finds its segment
//! among the live entries or, if a compaction retired it in between,
//! among the retired ones (see [`append_segment`]).
//!
//! This is the one room where manifests change. Each mutation is a named
//! function over the generic compare-and-swap loop ([`super::cas`]):
//! [`append_segment`] (a writer's commit), [`replace_prefix`] (a
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

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::cas::{self, Backoff, Step};
use super::error::CoordError;
use super::paths::{manifest_key, partition_dir};
use crate::store::{ETag, ObjectStore};

pub const MANIFEST_VERSION: u32 = 1;

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
    #[serde(flatten)]
    pub extra: Map<String, Value>,
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
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl SegmentEntry {
    /// An entry for a segment about to be committed or replaced into a
    /// manifest. `seq` is 0 until [`append_segment`] assigns one (or
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
            extra: Map::new(),
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
            version: MANIFEST_VERSION,
            partition,
            next_seq: 1,
            segments: Vec::new(),
            retired: Vec::new(),
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
            if !s.key.starts_with(&dir) || s.key.contains("..") {
                return Err(bad(format!("segment key {} is outside {dir}", s.key)));
            }
            last = s.seq;
        }
        Ok(())
    }
}

/// Reads and validates a partition's manifest; `None` if it has none yet.
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

/// What [`append_segment`] did.
#[derive(Clone, Debug, PartialEq)]
pub struct Appended {
    pub seq: u64,
    pub attempts: u32,
    pub conflicts: u32,
    pub retries: u32,
    /// The segment was found already committed (an earlier attempt's
    /// response was lost after the store applied it).
    pub already_committed: bool,
}

/// Commits `entry` (its `seq` is assigned here) to its partition's
/// manifest. Idempotent per segment key.
pub async fn append_segment(
    store: &dyn ObjectStore,
    partition: u32,
    entry: SegmentEntry,
    backoff: Backoff,
) -> Result<Appended, CoordError> {
    let key = manifest_key(partition);
    let mut found_seq = None;
    let updated = cas::update_json::<Manifest, _>(store, &key, backoff, |current| {
        let mut m = current.unwrap_or_else(|| Manifest::empty(partition));
        m.validate(partition)?;
        if let Some(existing) = m.find(&entry.key) {
            found_seq = Some(existing.seq);
            return Ok(Step::Keep(m));
        }
        // Committed, then compacted away before this retry: its records
        // are in the compaction's output. Appending it again would put an
        // old version above newer acknowledged writes.
        if let Some(retired) = m.retired.iter().find(|r| r.key == entry.key) {
            found_seq = Some(retired.seq.unwrap_or(0));
            return Ok(Step::Keep(m));
        }
        found_seq = None;
        let mut e = entry.clone();
        e.seq = m.next_seq;
        m.next_seq += 1;
        m.segments.push(e);
        Ok(Step::Write(m))
    })
    .await?;
    let seq = match found_seq {
        Some(seq) => seq,
        None => {
            updated
                .value
                .find(&entry.key)
                .expect("the written manifest holds the new segment")
                .seq
        }
    };
    Ok(Appended {
        seq,
        attempts: updated.attempts,
        conflicts: updated.conflicts,
        retries: updated.retries,
        already_committed: !updated.wrote,
    })
}

/// What [`replace_prefix`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replaced {
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
/// rebases on whatever writers appended.
pub async fn replace_prefix(
    store: &dyn ObjectStore,
    partition: u32,
    inputs: &[SegmentEntry],
    outputs: &[SegmentEntry],
    retired_at: &str,
    backoff: Backoff,
) -> Result<Replaced, CoordError> {
    let key = manifest_key(partition);
    let seq = inputs.last().map_or(0, |e| e.seq);
    let mut superseded = false;
    let result = cas::update_json::<Manifest, _>(store, &key, backoff, |cur| {
        let mut m = cur.ok_or_else(|| CoordError::MissingSetting(format!("{key} vanished")))?;
        m.validate(partition)?;
        let still_prefix = m.segments.len() >= inputs.len()
            && m.segments.iter().zip(inputs).all(|(s, i)| s.key == i.key);
        superseded = !still_prefix;
        if superseded {
            return Ok(Step::Keep(m));
        }
        let rest = m.segments.split_off(inputs.len());
        let outs = outputs.iter().cloned().map(|mut e| {
            e.seq = seq;
            e
        });
        m.segments = outs.chain(rest).collect();
        m.retired.extend(inputs.iter().map(|i| RetiredEntry {
            key: i.key.clone(),
            retired_at: retired_at.to_string(),
            seq: Some(i.seq),
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

/// Removes `gone` (objects GC deleted) from the partition's `retired` list.
pub async fn trim_retired(
    store: &dyn ObjectStore,
    partition: u32,
    gone: &std::collections::HashSet<&String>,
    backoff: Backoff,
) -> Result<(), CoordError> {
    let key = manifest_key(partition);
    cas::update_json::<Manifest, _>(store, &key, backoff, |cur| {
        let Some(mut m) = cur else {
            return Err(CoordError::MissingSetting(format!(
                "{key} vanished during gc"
            )));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;

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
        let b = Backoff::default();
        let (s1, s2) = ("vectors/p000/1.seg", "vectors/p000/2.seg");
        append_segment(&store, 0, entry(s1), b).await.unwrap();
        let second = append_segment(&store, 0, entry(s2), b).await.unwrap();
        let (m, _) = read_manifest(&store, 0).await.unwrap().unwrap();
        let out = entry("vectors/p000/c.seg");
        let replaced = replace_prefix(&store, 0, &m.segments, &[out], "t", b)
            .await
            .unwrap();
        assert_eq!(replaced, Replaced::Replaced);
        // The retry of s2's commit (its first PUT landed, the answer was lost).
        let retry = append_segment(&store, 0, entry(s2), b).await.unwrap();
        assert!(retry.already_committed, "{retry:?}");
        assert_eq!(
            retry.seq, second.seq,
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
}
