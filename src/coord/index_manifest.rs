//! The index manifest `_brainy/manifests/index.json` (DESIGN section 11): the
//! read-optimized layout over all partitions. It holds a generation number
//! (bumped by every commit), one watermark `W[p]` per partition (every
//! record of partition p committed at seq <= `W[p]` is accounted for in the
//! shards exactly once), the shards with their current deletion vectors,
//! the shards and deletion vectors waiting for GC, and the indexer lease.
//!
//! Like the partition manifests it exists from `init` on (created empty,
//! all watermarks 0, with them), so a missing one is corruption: the
//! partitions retire what the shards cover, and without this object those
//! records could not be found.
//!
//! This is the one room where the index manifest changes, the way
//! [`super::manifest`] is for the partition manifests. Each mutation is a
//! named function over one compare-and-swap loop: [`record_round`] (an
//! indexer round's commit), [`replace_merged`] (a shard merge's commit),
//! [`trim_index_retired`] (GC forgetting deleted objects), and
//! [`acquire_lease`] / [`release_lease`]. Watermarks only move forward
//! ([`IndexManifest::advance`] refuses otherwise).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::cas::{self, Backoff, Step};
use super::clock::{format_time, parse_time};
use super::error::CoordError;
use super::paths::{INDEX_MANIFEST_KEY, INDEX_PREFIX};
use crate::store::{ETag, ObjectStore, StoreError};

pub(crate) const INDEX_MANIFEST_VERSION: u32 = 2;
/// The version a manifest that lists routings carries: shoal versions
/// that do not know routed shards refuse it rather than misread it.
pub(crate) const ROUTED_MANIFEST_VERSION: u32 = 2;
/// Most routings live at once (the current one and the one its shards
/// are migrating from).
pub(crate) const MAX_LIVE_ROUTINGS: usize = 2;

/// The whole index manifest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IndexManifest {
    pub version: u32,
    /// Bumped by every commit that changes shards, watermarks or deletion
    /// vectors (not by lease changes).
    pub generation: u64,
    /// `W[p]` per partition: a segment seq of p, 0 when nothing is indexed.
    pub watermarks: Vec<u64>,
    pub shards: Vec<ShardEntry>,
    /// The routings live shards are built with (DESIGN section 12),
    /// oldest first, at most [`MAX_LIVE_ROUTINGS`]: new shards use the
    /// last; a routing leaves for `retired` when no listed shard names it
    /// and a newer one exists.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routings: Vec<RoutingEntry>,
    /// Shards and deletion vectors no longer current, kept for GC's grace
    /// period so readers holding an older index manifest can still fetch
    /// them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retired: Vec<RetiredObject>,
    /// The indexer currently working, and until when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<Lease>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One immutable shard.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ShardEntry {
    pub key: String,
    /// Rows in the shard object, dead ones included.
    pub rows: u64,
    /// Rows marked dead by the current deletion vector.
    #[serde(default)]
    pub dead: u64,
    pub bytes: u64,
    /// Merge level: shards of one level are merged into the next.
    pub level: u32,
    /// The current deletion vector, if any row is dead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletions: Option<String>,
    pub created_at: String,
    /// Length of the head region of a range-readable shard
    /// (`segment::shard`): one ranged GET of the object's first
    /// `headBytes` bytes is all a reader plans a query with. Absent: the
    /// shard is read whole (the segment format).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_bytes: Option<u64>,
    /// The generation of the routing the shard is grouped by (the routed
    /// format, `segment::routed`); absent for a shard with its own IVF.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing: Option<u64>,
    /// The searchable keys a routed shard holds a text index of
    /// (`segment::routed::text`), each with its analyzer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub text_fields: Vec<ShardTextField>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A searchable key a shard's text index covers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ShardTextField {
    pub key: String,
    pub analyzer: String,
}

impl IndexManifest {
    /// Per searchable key of `fields`, how many listed shards cannot yet
    /// answer it from a text index: routed shards built without it, and
    /// range-read shards with their own IVF (the indexer moves both to
    /// the current routing with every key indexed: a backfill). Shards
    /// read whole are scanned and never wait.
    pub fn text_backfill(&self, fields: &crate::text::TextFields) -> Vec<(String, String, u64)> {
        fields
            .iter()
            .map(|(key, a)| {
                let pending = self
                    .shards
                    .iter()
                    .filter(|s| {
                        s.head_bytes.is_some()
                            && (s.routing.is_none()
                                || !s
                                    .text_fields
                                    .iter()
                                    .any(|f| f.key == key && f.analyzer == a.as_str()))
                    })
                    .count() as u64;
                (key.to_string(), a.as_str().to_string(), pending)
            })
            .collect()
    }
}

impl ShardEntry {
    /// Whether the shard holds a text index of every one of `fields`
    /// (a routed shard without one is rebuilt by the indexer: a
    /// backfill).
    pub fn indexes_text(&self, fields: &crate::text::TextFields) -> bool {
        fields.iter().all(|(k, a)| {
            self.text_fields
                .iter()
                .any(|f| f.key == k && f.analyzer == a.as_str())
        })
    }
}

/// One routing object (`index::routing`): immutable, named by its
/// generation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoutingEntry {
    pub key: String,
    /// Shards built with it name it by this (ascending in the list).
    pub generation: u64,
    pub clusters: u32,
    /// How many rows it was sized for.
    pub trained_rows: u64,
    pub bytes: u64,
    /// Length of its prefix and head (the top level a reader holds).
    pub head_bytes: u64,
    pub created_at: String,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A shard or deletion vector waiting for GC, and since when.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RetiredObject {
    pub key: String,
    pub retired_at: String,
}

/// Who holds the indexer lease, and until when. An efficiency device:
/// two indexers at once are still correct (only one commit on the
/// generation wins); the lease keeps a second from doing the same work.
/// Its holder renews it while working and clears it when done
/// (`compact::lease`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Lease {
    pub holder: String,
    pub expires_at: String,
}

impl IndexManifest {
    /// The manifest of an index with nothing indexed yet.
    pub fn empty(partition_count: u32) -> Self {
        IndexManifest {
            // Version 1 until a routing is listed: older shoal versions
            // read an index without routed shards.
            version: 1,
            generation: 0,
            watermarks: vec![0; partition_count as usize],
            shards: Vec::new(),
            routings: Vec::new(),
            retired: Vec::new(),
            lease: None,
            extra: Map::new(),
        }
    }

    /// The watermark of partition `p`.
    pub fn watermark(&self, p: u32) -> u64 {
        self.watermarks.get(p as usize).copied().unwrap_or(0)
    }

    /// Rows live in the shards.
    pub fn live_rows(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.rows - s.dead.min(s.rows))
            .sum()
    }

    /// Moves partition `p`'s watermark to `to`; refuses to move it back.
    pub fn advance(&mut self, p: u32, to: u64) -> Result<(), CoordError> {
        let w = self
            .watermarks
            .get_mut(p as usize)
            .ok_or_else(|| CoordError::InvalidSetting {
                setting: "partition",
                value: p.to_string(),
                expected: "a partition of this index".into(),
            })?;
        if to < *w {
            return Err(CoordError::Corrupt {
                key: INDEX_MANIFEST_KEY.into(),
                reason: format!("watermark of partition {p} would move back from {w} to {to}"),
                found: format!("generation {}", self.generation),
            });
        }
        *w = to;
        Ok(())
    }

    /// Whether the lease is held by someone other than `holder` at `now`.
    pub(crate) fn leased_to_other(&self, holder: &str, now: SystemTime) -> Option<&Lease> {
        self.lease
            .as_ref()
            .filter(|l| l.holder != holder && parse_time(&l.expires_at).is_some_and(|t| t > now))
    }

    /// Checks what a reader relies on; the error names the key.
    pub fn validate(&self, partition_count: u32) -> Result<(), CoordError> {
        let bad = |reason: String| CoordError::Corrupt {
            key: INDEX_MANIFEST_KEY.into(),
            reason,
            found: format!("index manifest generation {}", self.generation),
        };
        if self.version > INDEX_MANIFEST_VERSION {
            return Err(bad(format!(
                "index manifest version {} is newer than this shoal understands \
                 ({INDEX_MANIFEST_VERSION})",
                self.version
            )));
        }
        if self.watermarks.len() != partition_count as usize {
            return Err(bad(format!(
                "{} watermarks for {partition_count} partitions",
                self.watermarks.len()
            )));
        }
        let mut seen = std::collections::HashSet::new();
        for s in &self.shards {
            let keys = std::iter::once(&s.key).chain(s.deletions.as_ref());
            for key in keys {
                if !key.starts_with(INDEX_PREFIX) || key.contains("..") {
                    return Err(bad(format!("object key {key} is outside {INDEX_PREFIX}")));
                }
                if !seen.insert(key) {
                    return Err(bad(format!("{key} is listed twice")));
                }
            }
            if s.dead > s.rows {
                return Err(bad(format!(
                    "shard {} has {} dead rows of {}",
                    s.key, s.dead, s.rows
                )));
            }
            if let Some(g) = s.routing {
                if self.routing(g).is_none() {
                    return Err(bad(format!(
                        "shard {} names routing {g}, which is not listed",
                        s.key
                    )));
                }
            }
        }
        if !self.routings.is_empty() && self.version < ROUTED_MANIFEST_VERSION {
            return Err(bad(format!("version {} lists routings", self.version)));
        }
        if self.routings.len() > MAX_LIVE_ROUTINGS {
            return Err(bad(format!("{} routings are listed", self.routings.len())));
        }
        for (i, r) in self.routings.iter().enumerate() {
            if !r.key.starts_with(INDEX_PREFIX) || r.key.contains("..") || !seen.insert(&r.key) {
                return Err(bad(format!(
                    "routing key {} is outside {INDEX_PREFIX} or listed twice",
                    r.key
                )));
            }
            if i > 0 && self.routings[i - 1].generation >= r.generation {
                return Err(bad("routings are not in ascending generation".into()));
            }
        }
        Ok(())
    }

    /// The routing of generation `g`, if listed.
    pub fn routing(&self, g: u64) -> Option<&RoutingEntry> {
        self.routings.iter().find(|r| r.generation == g)
    }

    /// The routing new shards are built with.
    pub fn current_routing(&self) -> Option<&RoutingEntry> {
        self.routings.last()
    }

    /// Moves to `retired` every routing that no listed shard names and
    /// that is not the current one.
    fn retire_unused_routings(&mut self, retired_at: &str) {
        let Some(current) = self.routings.last().map(|r| r.generation) else {
            return;
        };
        let named: std::collections::HashSet<u64> =
            self.shards.iter().filter_map(|s| s.routing).collect();
        let (keep, gone): (Vec<_>, Vec<_>) = std::mem::take(&mut self.routings)
            .into_iter()
            .partition(|r| r.generation == current || named.contains(&r.generation));
        self.routings = keep;
        self.retired.extend(gone.into_iter().map(|r| RetiredObject {
            key: r.key,
            retired_at: retired_at.to_string(),
        }));
    }
}

/// Parses and validates index manifest bytes.
pub(crate) fn parse_index_manifest(
    partition_count: u32,
    bytes: &[u8],
) -> Result<IndexManifest, CoordError> {
    let m: IndexManifest = cas::parse_json(INDEX_MANIFEST_KEY, bytes)?;
    m.validate(partition_count)?;
    Ok(m)
}

/// Reads and validates the index manifest; `None` if there is none.
pub async fn read_index_manifest(
    store: &dyn ObjectStore,
    partition_count: u32,
) -> Result<Option<(IndexManifest, ETag)>, CoordError> {
    let found = cas::read_json::<IndexManifest>(store, INDEX_MANIFEST_KEY).await?;
    if let Some((m, _)) = &found {
        m.validate(partition_count)?;
    }
    Ok(found)
}

/// The error for a missing index manifest.
pub(crate) fn missing_index_manifest() -> CoordError {
    CoordError::Corrupt {
        key: INDEX_MANIFEST_KEY.into(),
        reason: "the index manifest is missing: this index creates it at init, so it was \
                 deleted or lost, and the records its shards cover cannot be found"
            .into(),
        found: "no object".into(),
    }
}

/// Creates the empty index manifest if there is none (create-only; a
/// racing creator's is kept). Returns whether this call created it.
pub(crate) async fn create_index_manifest(
    store: &dyn ObjectStore,
    partition_count: u32,
) -> Result<bool, CoordError> {
    let bytes = serde_json::to_vec(&IndexManifest::empty(partition_count)).expect("serializable");
    match store.put_if_absent(INDEX_MANIFEST_KEY, bytes.into()).await {
        Ok(_) => Ok(true),
        Err(StoreError::AlreadyExists { .. }) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Compare-and-swap on the index manifest: `change` edits the current
/// one (it may run several times, so it must depend only on its input) or
/// says to keep it (`Ok(false)`). Every write bumps the generation.
/// Returns the manifest as now stored and whether this call wrote it.
///
/// The unnamed door, for tests that stage (or damage) a manifest; the
/// engine changes it only through the named functions of this module.
#[cfg(any(test, feature = "test-util"))]
pub async fn update_index<F>(
    store: &dyn ObjectStore,
    partition_count: u32,
    backoff: Backoff,
    change: F,
) -> Result<(IndexManifest, bool), CoordError>
where
    F: FnMut(&mut IndexManifest) -> Result<bool, CoordError>,
{
    update(store, partition_count, backoff, true, change).await
}

/// A shard's new deletion vector, replacing its current one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct NewDeletions {
    /// The shard whose rows it marks.
    pub shard: String,
    /// The new deletion vector's key.
    pub key: String,
    /// Rows it marks dead.
    pub dead: u64,
}

/// What one indexing round commits (DESIGN section 11, step 6).
#[derive(Clone, Copy, Debug)]
pub(crate) struct RoundCommit<'a> {
    /// Partitions whose watermark moves, and to which seq.
    pub advanced: &'a BTreeMap<u32, u64>,
    /// The shards built from the tails.
    pub shards: &'a [ShardEntry],
    /// Deletion vectors marking the older shard rows the tails supersede.
    pub deletions: &'a [NewDeletions],
    /// A routing this round trained (its shards name it): it becomes the
    /// current one.
    pub routing: Option<&'a RoutingEntry>,
}

/// Commits an indexing round if the index manifest's generation is still
/// `expected` (the one the round read): watermarks forward, the new
/// shards added, each named shard's deletion vector replaced (the old one
/// to `retired`, stamped `retired_at`). `too_late` is asked on every
/// attempt whose generation still matches: true when the round's objects
/// are past the commit age bound (GC may take them), and the commit is
/// given up. Returns the manifest as committed, or `None` when another
/// indexer committed first or it was too late (this round's objects are
/// orphans for GC).
pub(crate) async fn record_round(
    store: &dyn ObjectStore,
    partition_count: u32,
    backoff: Backoff,
    expected: u64,
    mut too_late: impl FnMut() -> bool,
    round: RoundCommit<'_>,
    retired_at: &str,
) -> Result<Option<IndexManifest>, CoordError> {
    let (m, wrote) = update(store, partition_count, backoff, true, |m| {
        if m.generation != expected || too_late() {
            return Ok(false);
        }
        m.apply_round(round, retired_at)?;
        Ok(true)
    })
    .await?;
    Ok(wrote.then_some(m))
}

/// What one shard merge commits (DESIGN section 11, "Merges").
#[derive(Clone, Copy, Debug)]
pub(crate) struct MergeCommit<'a> {
    /// The shards merged.
    pub inputs: &'a [ShardEntry],
    /// The shard(s) of their live rows, one level up.
    pub outputs: &'a [ShardEntry],
}

/// Commits a shard merge if the index manifest's generation is still
/// `expected`: the outputs replace the inputs, whose shards and deletion
/// vectors go to `retired`, stamped `retired_at`. `too_late` and the
/// result as for [`record_round`].
pub(crate) async fn replace_merged(
    store: &dyn ObjectStore,
    partition_count: u32,
    backoff: Backoff,
    expected: u64,
    mut too_late: impl FnMut() -> bool,
    merge: MergeCommit<'_>,
    retired_at: &str,
) -> Result<Option<IndexManifest>, CoordError> {
    let (m, wrote) = update(store, partition_count, backoff, true, |m| {
        if m.generation != expected || too_late() {
            return Ok(false);
        }
        m.replace_shards(merge, retired_at);
        Ok(true)
    })
    .await?;
    Ok(wrote.then_some(m))
}

impl IndexManifest {
    /// [`record_round`]'s change.
    fn apply_round(&mut self, round: RoundCommit<'_>, retired_at: &str) -> Result<(), CoordError> {
        for (&p, &w) in round.advanced {
            self.advance(p, w)?;
        }
        for d in round.deletions {
            let entry = self
                .shards
                .iter_mut()
                .find(|s| s.key == d.shard)
                .expect("the generation did not change, so neither did the shards");
            if let Some(old) = entry.deletions.replace(d.key.clone()) {
                self.retired.push(RetiredObject {
                    key: old,
                    retired_at: retired_at.to_string(),
                });
            }
            entry.dead = d.dead;
        }
        if let Some(r) = round.routing {
            self.routings.push(r.clone());
            self.version = self.version.max(ROUTED_MANIFEST_VERSION);
        }
        self.shards.extend(round.shards.iter().cloned());
        self.retire_unused_routings(retired_at);
        Ok(())
    }

    /// [`replace_merged`]'s change.
    fn replace_shards(&mut self, merge: MergeCommit<'_>, retired_at: &str) {
        let MergeCommit { inputs, outputs } = merge;
        self.shards
            .retain(|s| !inputs.iter().any(|i| i.key == s.key));
        for input in inputs {
            for key in std::iter::once(&input.key).chain(input.deletions.as_ref()) {
                self.retired.push(RetiredObject {
                    key: key.clone(),
                    retired_at: retired_at.to_string(),
                });
            }
        }
        self.shards.extend(outputs.iter().cloned());
        self.retire_unused_routings(retired_at);
    }
}

/// Removes `gone` (objects GC deleted) from `retired`, without bumping
/// the generation (an indexer at work keeps its commit).
pub(crate) async fn trim_index_retired(
    store: &dyn ObjectStore,
    partition_count: u32,
    gone: &std::collections::HashSet<&String>,
    backoff: Backoff,
) -> Result<(), CoordError> {
    update(store, partition_count, backoff, false, |m| {
        let before = m.retired.len();
        m.retired.retain(|r| !gone.contains(&r.key));
        Ok(m.retired.len() != before)
    })
    .await?;
    Ok(())
}

/// [`update_index`], bumping the generation only for content changes
/// (shards, watermarks, deletion vectors), not for the lease.
async fn update<F>(
    store: &dyn ObjectStore,
    partition_count: u32,
    backoff: Backoff,
    bump: bool,
    mut change: F,
) -> Result<(IndexManifest, bool), CoordError>
where
    F: FnMut(&mut IndexManifest) -> Result<bool, CoordError>,
{
    let updated = cas::update_json::<IndexManifest, _>(store, INDEX_MANIFEST_KEY, backoff, |cur| {
        let mut m = cur.ok_or_else(missing_index_manifest)?;
        m.validate(partition_count)?;
        if !change(&mut m)? {
            return Ok(Step::Keep(m));
        }
        m.generation += u64::from(bump);
        m.validate(partition_count)?;
        Ok(Step::Write(m))
    })
    .await?;
    Ok((updated.value, updated.wrote))
}

/// Why the lease could not be taken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LeaseHeld {
    pub holder: String,
    pub expires_at: String,
}

/// Takes (or renews) the indexer lease for `holder` until `now + ttl`,
/// unless someone else holds an unexpired one. Returns the index
/// manifest's generation, or who holds the lease. A compare-and-swap
/// like every change here, not bumping the generation, so a renewal
/// never fails a round's commit.
pub(crate) async fn acquire_lease(
    store: &dyn ObjectStore,
    partition_count: u32,
    holder: &str,
    now: SystemTime,
    ttl: Duration,
) -> Result<Result<u64, LeaseHeld>, CoordError> {
    let mut held = None;
    let (m, _) = update(store, partition_count, Backoff::default(), false, |m| {
        held = m.leased_to_other(holder, now).map(|l| LeaseHeld {
            holder: l.holder.clone(),
            expires_at: l.expires_at.clone(),
        });
        if held.is_some() {
            return Ok(false);
        }
        m.lease = Some(Lease {
            holder: holder.to_string(),
            expires_at: format_time(now + ttl),
        });
        Ok(true)
    })
    .await?;
    Ok(match held {
        Some(h) => Err(h),
        None => Ok(m.generation),
    })
}

/// Gives the lease up if `holder` has it.
pub(crate) async fn release_lease(
    store: &dyn ObjectStore,
    partition_count: u32,
    holder: &str,
) -> Result<(), CoordError> {
    update(store, partition_count, Backoff::default(), false, |m| {
        if m.lease.as_ref().is_some_and(|l| l.holder == holder) {
            m.lease = None;
            return Ok(true);
        }
        Ok(false)
    })
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coord::clock::{Clock, SystemClock};
    use crate::store::memory::MemoryStore;

    fn shard(key: &str) -> ShardEntry {
        ShardEntry {
            key: key.into(),
            rows: 10,
            dead: 0,
            bytes: 100,
            level: 0,
            deletions: None,
            created_at: "t".into(),
            head_bytes: None,
            routing: None,
            text_fields: Vec::new(),
            extra: Map::new(),
        }
    }

    #[tokio::test]
    async fn created_once_then_changed_only_by_compare_and_swap() {
        let store = MemoryStore::unique();
        assert!(read_index_manifest(&store, 4).await.unwrap().is_none());
        let e = update_index(&store, 4, Backoff::default(), |_| Ok(true))
            .await
            .unwrap_err();
        assert!(
            e.to_string().contains("_brainy/manifests/index.json"),
            "{e}"
        );
        assert!(create_index_manifest(&store, 4).await.unwrap());
        assert!(!create_index_manifest(&store, 4).await.unwrap(), "kept");
        let (m, _) = read_index_manifest(&store, 4).await.unwrap().unwrap();
        assert_eq!(m, IndexManifest::empty(4));
        // Concurrent commits all land; the generation counts them.
        let adds = (0..8).map(|i| {
            let store = &store;
            async move {
                update_index(store, 4, Backoff::default(), |m| {
                    m.shards.push(shard(&format!("index/shards/{i}.shard")));
                    m.advance(i % 4, u64::from(i) + 1)?;
                    Ok(true)
                })
                .await
                .unwrap()
            }
        });
        futures::future::join_all(adds).await;
        let (m, _) = read_index_manifest(&store, 4).await.unwrap().unwrap();
        assert_eq!(m.shards.len(), 8);
        assert_eq!(m.generation, 8);
        assert_eq!(m.watermarks, vec![5, 6, 7, 8]);
        assert_eq!(m.live_rows(), 80);
    }

    #[test]
    fn watermarks_never_move_back_and_bad_manifests_are_named() {
        let mut m = IndexManifest::empty(2);
        m.advance(1, 7).unwrap();
        let e = m.advance(1, 6).unwrap_err().to_string();
        assert!(e.contains("move back from 7 to 6"), "{e}");
        assert!(m.advance(2, 1).is_err(), "no partition 2");
        let bad = |f: &dyn Fn(&mut IndexManifest)| {
            let mut m = IndexManifest::empty(2);
            f(&mut m);
            let bytes = serde_json::to_vec(&m).unwrap();
            parse_index_manifest(2, &bytes).unwrap_err().to_string()
        };
        let e = bad(&|m| m.watermarks.push(0));
        assert!(e.contains("3 watermarks for 2 partitions"), "{e}");
        let e = bad(&|m| m.shards.push(shard("vectors/p000/x.seg")));
        assert!(e.contains("outside index/"), "{e}");
        let e = bad(&|m| {
            m.shards.push(shard("index/shards/a.shard"));
            m.shards.push(shard("index/shards/a.shard"));
        });
        assert!(e.contains("listed twice"), "{e}");
        let e = bad(&|m| {
            let mut s = shard("index/shards/a.shard");
            s.dead = 11;
            m.shards.push(s);
        });
        assert!(e.contains("11 dead rows of 10"), "{e}");
        let e = parse_index_manifest(2, b"<html>").unwrap_err().to_string();
        assert!(e.contains("_brainy/manifests/index.json"), "{e}");
    }

    #[tokio::test]
    async fn a_round_commits_only_on_the_generation_it_read_and_in_time() {
        let store = MemoryStore::unique();
        create_index_manifest(&store, 2).await.unwrap();
        let b = Backoff::default();
        let advanced = BTreeMap::from([(0, 3), (1, 5)]);
        let shards = [shard("index/shards/a.shard")];
        let first = RoundCommit {
            advanced: &advanced,
            shards: &shards,
            deletions: &[],
            routing: None,
        };
        let m = record_round(&store, 2, b, 0, || false, first, "t1")
            .await
            .unwrap()
            .expect("committed");
        assert_eq!((m.generation, m.watermarks.clone()), (1, vec![3, 5]));
        assert_eq!(m.shards, shards);
        // Read at generation 0: another indexer has committed since.
        let stale = record_round(&store, 2, b, 0, || false, first, "t1");
        assert_eq!(stale.await.unwrap(), None);
        // Past the commit age bound: given up.
        let late = record_round(&store, 2, b, 1, || true, first, "t1");
        assert_eq!(late.await.unwrap(), None);
        let (m, _) = read_index_manifest(&store, 2).await.unwrap().unwrap();
        assert_eq!(m.generation, 1, "nothing written");
        // Deletion vectors replace the shard's current one, which retires.
        let none = BTreeMap::new();
        for (g, dv, dead) in [
            (1, "index/deletions/1.dv", 2),
            (2, "index/deletions/2.dv", 4),
        ] {
            let deletions = [NewDeletions {
                shard: "index/shards/a.shard".into(),
                key: dv.into(),
                dead,
            }];
            let round = RoundCommit {
                advanced: &none,
                shards: &[],
                deletions: &deletions,
                routing: None,
            };
            let got = record_round(&store, 2, b, g, || false, round, "t2").await;
            assert!(got.unwrap().is_some());
        }
        let (m, _) = read_index_manifest(&store, 2).await.unwrap().unwrap();
        assert_eq!(
            m.shards[0].deletions.as_deref(),
            Some("index/deletions/2.dv")
        );
        assert_eq!((m.shards[0].dead, m.generation), (4, 3));
        let retired: Vec<_> = m
            .retired
            .iter()
            .map(|r| (&*r.key, &*r.retired_at))
            .collect();
        assert_eq!(retired, [("index/deletions/1.dv", "t2")]);
        // A watermark never moves back, even in a commit.
        let back = BTreeMap::from([(0, 2)]);
        let round = RoundCommit {
            advanced: &back,
            shards: &[],
            deletions: &[],
            routing: None,
        };
        let e = record_round(&store, 2, b, 3, || false, round, "t3").await;
        assert!(e.unwrap_err().to_string().contains("move back from 3 to 2"));
    }

    #[tokio::test]
    async fn a_merge_replaces_its_inputs_and_retires_them_with_their_deletion_vectors() {
        let store = MemoryStore::unique();
        create_index_manifest(&store, 1).await.unwrap();
        let b = Backoff::default();
        let mut inputs = vec![shard("index/shards/a.shard"), shard("index/shards/b.shard")];
        inputs[1].deletions = Some("index/deletions/b.dv".into());
        inputs[1].dead = 3;
        let kept = shard("index/shards/c.shard");
        let staged = inputs
            .iter()
            .cloned()
            .chain([kept.clone()])
            .collect::<Vec<_>>();
        let none = BTreeMap::new();
        let round = RoundCommit {
            advanced: &none,
            shards: &staged,
            deletions: &[],
            routing: None,
        };
        record_round(&store, 1, b, 0, || false, round, "t0")
            .await
            .unwrap()
            .unwrap();
        let mut out = shard("index/shards/ab.shard");
        out.level = 1;
        let merge = MergeCommit {
            inputs: &inputs,
            outputs: std::slice::from_ref(&out),
        };
        assert_eq!(
            replace_merged(&store, 1, b, 0, || false, merge, "t1")
                .await
                .unwrap(),
            None,
            "the inputs were read at an older generation"
        );
        assert_eq!(
            replace_merged(&store, 1, b, 1, || true, merge, "t1")
                .await
                .unwrap(),
            None,
            "too late"
        );
        let m = replace_merged(&store, 1, b, 1, || false, merge, "t1")
            .await
            .unwrap()
            .expect("committed");
        assert_eq!(m.generation, 2);
        assert_eq!(m.shards, vec![kept, out]);
        let retired: Vec<_> = m
            .retired
            .iter()
            .map(|r| (&*r.key, &*r.retired_at))
            .collect();
        assert_eq!(
            retired,
            [
                ("index/shards/a.shard", "t1"),
                ("index/shards/b.shard", "t1"),
                ("index/deletions/b.dv", "t1"),
            ]
        );
    }

    #[tokio::test]
    async fn one_indexer_holds_the_lease_until_it_expires_or_is_released() {
        let store = MemoryStore::unique();
        create_index_manifest(&store, 1).await.unwrap();
        let t0 = SystemClock.now();
        let ttl = Duration::from_secs(60);
        assert!(acquire_lease(&store, 1, "a", t0, ttl)
            .await
            .unwrap()
            .is_ok());
        let held = acquire_lease(&store, 1, "b", t0, ttl).await.unwrap();
        assert_eq!(held.unwrap_err().holder, "a");
        assert!(
            acquire_lease(&store, 1, "a", t0, ttl)
                .await
                .unwrap()
                .is_ok(),
            "renewal"
        );
        let later = t0 + Duration::from_secs(61);
        assert!(
            acquire_lease(&store, 1, "b", later, ttl)
                .await
                .unwrap()
                .is_ok(),
            "an expired lease can be taken"
        );
        release_lease(&store, 1, "a").await.unwrap();
        let (m, _) = read_index_manifest(&store, 1).await.unwrap().unwrap();
        assert_eq!(m.lease.unwrap().holder, "b", "only the holder releases");
        release_lease(&store, 1, "b").await.unwrap();
        let (m, _) = read_index_manifest(&store, 1).await.unwrap().unwrap();
        assert!(m.lease.is_none());
    }

    fn routing(g: u64) -> RoutingEntry {
        RoutingEntry {
            key: format!("index/routing/{g:020}-x.routing"),
            generation: g,
            clusters: 10,
            trained_rows: 10_000,
            bytes: 1000,
            head_bytes: 100,
            created_at: "t".into(),
            extra: Map::new(),
        }
    }

    fn routed(key: &str, g: u64) -> ShardEntry {
        ShardEntry {
            routing: Some(g),
            ..shard(key)
        }
    }

    /// A round that trains a routing lists it (and the manifest becomes
    /// version 2, which older shoal versions refuse); a routing no shard
    /// names any more retires once a newer one exists; a shard naming an
    /// unlisted routing, or a version-1 manifest with routings, is refused.
    #[tokio::test]
    async fn routings_are_listed_by_rounds_and_retired_when_unused() {
        let store = MemoryStore::unique();
        create_index_manifest(&store, 1).await.unwrap();
        let (m, _) = read_index_manifest(&store, 1).await.unwrap().unwrap();
        assert_eq!(
            m.version, 1,
            "an index without routings stays readable by older versions"
        );
        let b = Backoff::default();
        let none = BTreeMap::new();
        let (r1, r2) = (routing(1), routing(2));
        let old = [routed("index/shards/a.shard", 1)];
        let round = RoundCommit {
            advanced: &none,
            shards: &old,
            deletions: &[],
            routing: Some(&r1),
        };
        let m = record_round(&store, 1, b, 0, || false, round, "t0")
            .await
            .unwrap()
            .unwrap();
        assert_eq!((m.version, m.current_routing()), (2, Some(&r1)));
        // A second routing: the first stays while a shard names it.
        let new = [routed("index/shards/b.shard", 2)];
        let round = RoundCommit {
            advanced: &none,
            shards: &new,
            deletions: &[],
            routing: Some(&r2),
        };
        let m = record_round(&store, 1, b, 1, || false, round, "t1")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(m.routings, vec![r1.clone(), r2.clone()]);
        assert!(m.retired.is_empty());
        // The migration rebuilds a's rows under routing 2: routing 1 retires.
        let out = [routed("index/shards/c.shard", 2)];
        let merge = MergeCommit {
            inputs: &old,
            outputs: &out,
        };
        let m = replace_merged(&store, 1, b, 2, || false, merge, "t2")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(m.routings, vec![r2.clone()]);
        let retired: Vec<&str> = m.retired.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(retired, vec!["index/shards/a.shard", r1.key.as_str()]);
        // The current routing stays even with no shard.
        let mut m2 = m.clone();
        m2.shards.clear();
        m2.retire_unused_routings("t3");
        assert_eq!(m2.routings, vec![r2.clone()]);
        // What validation refuses.
        let bad = |f: &dyn Fn(&mut IndexManifest)| {
            let mut x = m.clone();
            f(&mut x);
            x.validate(1).unwrap_err().to_string()
        };
        assert!(
            bad(&|x| x.shards.push(routed("index/shards/d.shard", 7))).contains("names routing 7")
        );
        assert!(bad(&|x| x.version = 1).contains("version 1 lists routings"));
        assert!(
            bad(&|x| x.routings = vec![routing(2), routing(4), routing(5)]).contains("3 routings")
        );
        assert!(bad(&|x| x.routings.insert(0, routing(9))).contains("ascending"));
        assert!(bad(&|x| x.version = 3).contains("newer than this shoal"));
    }
}
