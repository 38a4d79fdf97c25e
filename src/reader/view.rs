//! Per-partition views: the manifest a reader last saw, and which records
//! in it are live.
//!
//! A record at (segment seq, position) is live when it is the newest
//! version of its id and not a tombstone. A [`PartitionView`] keeps, per
//! segment, a live mask, plus the newest location of every id. When a
//! manifest changes by *appending* segments (every commit does), only the
//! new segments are read: their records become the newest versions of
//! their ids and the older locations are switched off. Any other change
//! (compaction replacing segments) rebuilds the view from all segments.
//! Views are immutable once built; a refresh swaps in a new one, so a
//! running query keeps the snapshot it started with.

use std::sync::Arc;

use futures::StreamExt;
use tokio::time::Instant;

use super::{PartitionError, Shared};
use crate::coord::manifest::{found_or_empty, parse_manifest, Manifest};
use crate::coord::paths::manifest_key;
use crate::coord::watched::{revalidate, Revalidated};
use crate::index::AnnIndex;
use crate::segment::{LiveSet, Segment};
use crate::store::{ETag, ObjectStore};

/// One partition as a reader sees it.
#[derive(Clone, Debug)]
pub(super) struct PartitionView {
    pub partition: u32,
    pub manifest: Manifest,
    pub etag: Option<ETag>,
    /// Live records, segment by segment in manifest order.
    pub live: LiveSet,
    /// Each segment's parsed ANN index, if it has one.
    pub ann: Vec<Option<Arc<AnnIndex>>>,
}

impl PartitionView {
    fn empty(partition: u32) -> Self {
        PartitionView {
            partition,
            manifest: Manifest::empty(partition),
            etag: None,
            live: LiveSet::default(),
            ann: Vec::new(),
        }
    }

    /// Adds segments newer than everything in the view, in seq order
    /// (`keys` name them for errors).
    fn absorb(&mut self, segments: &[Arc<Segment>], keys: &[String]) -> Result<(), PartitionError> {
        for (seg, key) in segments.iter().zip(keys) {
            let ann = match seg.index_bytes() {
                None => None,
                Some(bytes) => Some(Arc::new(
                    AnnIndex::parse(bytes, seg.dimensions(), seg.len())
                        .map_err(|reason| PartitionError::bad_index(key, reason))?,
                )),
            };
            self.ann.push(ann);
            self.live.absorb(seg);
        }
        Ok(())
    }

    /// Live records in the view.
    pub(super) fn live_count(&self) -> u64 {
        self.live.live_count()
    }
}

/// What one operation (a query, a get, a warm-up) carries into its loads:
/// the cache hits and misses it saw, and when it must be done.
pub(crate) struct CacheTally {
    pub(crate) hits: std::sync::atomic::AtomicU64,
    pub(crate) misses: std::sync::atomic::AtomicU64,
    /// Segments this operation fetched itself: a miss once, however often
    /// it then uses them (a refresh loads new segments, the query then
    /// reads them through the cache; that is not a hit).
    fetched: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Transient store errors are retried until this instant.
    pub(crate) deadline: Instant,
}

impl CacheTally {
    pub(crate) fn until(deadline: Instant) -> Self {
        CacheTally {
            hits: Default::default(),
            misses: Default::default(),
            fetched: Default::default(),
            deadline,
        }
    }
}

/// Where a segment is: an object key, and the section of it when the
/// object is a batch object (see `segment::batch`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct SegRef {
    pub key: String,
    pub section: Option<(u64, u64)>,
    /// The batch object's size, when the manifest says.
    pub object_bytes: Option<u64>,
}

impl SegRef {
    pub(crate) fn whole(key: &str) -> Self {
        SegRef {
            key: key.to_string(),
            section: None,
            object_bytes: None,
        }
    }

    pub(crate) fn of(entry: &crate::coord::manifest::SegmentEntry) -> Self {
        SegRef {
            key: entry.key.clone(),
            section: entry.range(),
            object_bytes: entry.section.and_then(|s| s.object_bytes),
        }
    }

    /// The cache key: unique across partitions.
    fn locator(&self) -> String {
        match self.section {
            None => self.key.clone(),
            Some((offset, length)) => format!("{}#{offset}+{length}", self.key),
        }
    }
}

/// A segment through the cache (single flight per segment). Sections of
/// one batch object share one whole-object GET (`Shared::objects`).
pub(crate) async fn load_segment(
    shared: &Shared,
    store: &dyn ObjectStore,
    at: &SegRef,
    tally: &CacheTally,
) -> Result<Arc<Segment>, PartitionError> {
    use std::sync::atomic::Ordering::Relaxed;
    let key = at.locator();
    let key = key.as_str();
    let entry = shared
        .cache
        .entry(key.to_string())
        .or_try_insert_with(async {
            crate::coord::watched::retrying(
                tally.deadline,
                crate::segment::LoadError::is_retryable,
                || {
                    shared.objects.load_at(
                        store,
                        &at.key,
                        at.section,
                        at.object_bytes,
                        shared.shape,
                    )
                },
            )
            .await
            .map(Arc::new)
            .map_err(PartitionError::from_load)
        })
        .await
        .map_err(|e: Arc<PartitionError>| (*e).clone())?;
    let fresh = entry.is_fresh();
    let own = {
        let mut fetched = tally.fetched.lock().unwrap();
        if fresh {
            fetched.insert(key.to_string());
        }
        !fresh && fetched.contains(key)
    };
    if own {
        return Ok(entry.into_value()); // counted as a miss when fetched
    }
    let (counter, global) = if fresh {
        (&tally.misses, &shared.misses)
    } else {
        (&tally.hits, &shared.hits)
    };
    counter.fetch_add(1, Relaxed);
    global.fetch_add(1, Relaxed);
    if let Some(m) = &shared.metrics {
        let c = if fresh {
            &m.cache_misses
        } else {
            &m.cache_hits
        };
        c.fetch_add(1, Relaxed);
    }
    Ok(entry.into_value())
}

/// The segments of a view, in manifest order, through the cache.
pub(crate) async fn segments_of(
    shared: &Shared,
    store: &dyn ObjectStore,
    view: &PartitionView,
    tally: &CacheTally,
) -> Result<Vec<Arc<Segment>>, PartitionError> {
    let refs: Vec<SegRef> = view.manifest.segments.iter().map(SegRef::of).collect();
    load_segments(shared, store, refs, tally).await
}

/// Loads segments, up to 8 at a time, keeping their order.
pub(crate) async fn load_segments(
    shared: &Shared,
    store: &dyn ObjectStore,
    refs: Vec<SegRef>,
    tally: &CacheTally,
) -> Result<Vec<Arc<Segment>>, PartitionError> {
    let futs = refs
        .into_iter()
        .map(|at| async move { load_segment(shared, store, &at, tally).await });
    futures::stream::iter(futs)
        .buffered(8)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

/// Revalidates partition `p`'s manifest (conditional GET when we hold an
/// ETag, unless `force`), reading any new segments and swapping in a new
/// view. The caller holds the slot's refresh lock.
pub(crate) async fn refresh(
    shared: &Shared,
    store: &dyn ObjectStore,
    p: u32,
    force: bool,
    tally: &CacheTally,
) -> Result<Arc<PartitionView>, PartitionError> {
    let slot = &shared.views[p as usize];
    let current = slot.current();
    let key = manifest_key(p);
    let now = Instant::now();
    // Taken before the manifest is read: a query whose own ticket is lower
    // may rely on this refresh having seen everything committed before it.
    let ticket = shared.next_ticket();
    let held = current
        .as_ref()
        .and_then(|v| v.etag.clone())
        .filter(|_| !force);
    let got = revalidate(store, &key, held.as_ref(), Some(tally.deadline))
        .await
        .map_err(PartitionError::from_store)?;
    let (found, etag) = match got {
        Revalidated::Unchanged => {
            slot.touch(now, ticket);
            return Ok(current.expect("an etag implies a view"));
        }
        Revalidated::Changed(got) => (
            Some(parse_manifest(p, &got.bytes).map_err(PartitionError::from_manifest)?),
            Some(got.etag),
        ),
        Revalidated::Missing => (None, None),
    };
    let manifest = found_or_empty(p, found, shared.manifests_required)
        .map_err(PartitionError::from_manifest)?;
    // Appended segments only, when the old list is a prefix of the new one.
    let base = current.filter(|c| {
        c.manifest.segments.len() <= manifest.segments.len()
            && c.manifest
                .segments
                .iter()
                .zip(&manifest.segments)
                .all(|(a, b)| a.key == b.key)
    });
    let mut view = match &base {
        Some(b) => (**b).clone(),
        None => PartitionView::empty(p),
    };
    let skip = view.live.segments();
    let new_keys: Vec<String> = manifest.segments[skip..]
        .iter()
        .map(|e| e.key.clone())
        .collect();
    let new_refs = manifest.segments[skip..].iter().map(SegRef::of).collect();
    let new_segments = load_segments(shared, store, new_refs, tally).await?;
    view.absorb(&new_segments, &new_keys)?;
    view.manifest = manifest;
    view.etag = etag;
    let view = Arc::new(view);
    slot.set(view.clone(), now, ticket);
    if let Some(m) = &shared.metrics {
        let total: u64 = shared
            .views
            .iter()
            .filter_map(|s| s.current())
            .map(|v| v.live_count())
            .sum();
        m.vector_count
            .store(total, std::sync::atomic::Ordering::Relaxed);
    }
    Ok(view)
}
