//! Loading a partition for a query: a view as fresh as the consistency
//! level asks for, its segments through the cache, and the one retry a
//! vanished segment gets (DESIGN section 8: a segment that is gone means
//! our manifest predates a compaction plus GC: refresh and retry once).

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::view::{self, CacheTally, PartitionView};
use super::{Consistency, PartitionError, ReadError, Shared};
use crate::segment::Segment;
use crate::store::ObjectStore;

/// How fresh a view must be, and the ticket of the operation asking.
#[derive(Clone, Copy, Debug)]
pub(super) struct Freshness {
    pub consistency: Consistency,
    pub staleness: Duration,
    pub ticket: u64,
}

/// A reader's copy of one watched object (a partition view, the index
/// view): the copy, when and by which ticket it was last revalidated,
/// and a lock so one refresh runs at a time. [`Slot::fresh_for`] is the
/// freshness rule, the only one.
pub(crate) struct Slot<V> {
    view: Mutex<Option<Arc<V>>>,
    checked_at: Mutex<Option<Instant>>,
    /// Ticket of the newest refresh (see `Shared::tickets`); 0 = never.
    checked_ticket: AtomicU64,
    pub refresh: tokio::sync::Mutex<()>,
}

impl<V> Default for Slot<V> {
    fn default() -> Self {
        Slot {
            view: Mutex::new(None),
            checked_at: Mutex::new(None),
            checked_ticket: AtomicU64::new(0),
            refresh: tokio::sync::Mutex::new(()),
        }
    }
}

impl<V> Slot<V> {
    pub(super) fn current(&self) -> Option<Arc<V>> {
        self.view.lock().unwrap().clone()
    }

    /// Whether the copy held was checked recently enough for `want`.
    pub(super) fn fresh_for(&self, want: Freshness) -> bool {
        let checked = *self.checked_at.lock().unwrap();
        match want.consistency {
            Consistency::Eventual => checked.is_some(),
            Consistency::Bounded => checked.is_some_and(|t| t.elapsed() < want.staleness),
            // Revalidated by a refresh that began after this operation did
            // (ours or a concurrent query's).
            Consistency::Strong => self.checked_ticket.load(SeqCst) > want.ticket,
        }
    }

    /// Holds `view`, revalidated at `at` by the refresh holding `ticket`.
    pub(super) fn set(&self, view: Arc<V>, at: Instant, ticket: u64) {
        *self.view.lock().unwrap() = Some(view);
        self.touch(at, ticket);
    }

    /// The copy held was found current at `at` by the refresh holding
    /// `ticket`.
    pub(super) fn touch(&self, at: Instant, ticket: u64) {
        *self.checked_at.lock().unwrap() = Some(at);
        self.checked_ticket.fetch_max(ticket, SeqCst);
    }
}

/// Returns a view of `p` as fresh as `want` asks for.
pub(super) async fn ensure_view(
    shared: &Shared,
    store: &dyn ObjectStore,
    p: u32,
    want: Freshness,
    tally: &CacheTally,
) -> Result<Arc<PartitionView>, PartitionError> {
    let slot = &shared.views[p as usize];
    let fresh = || slot.fresh_for(want);
    if fresh() {
        if let Some(v) = slot.current() {
            return Ok(v);
        }
    }
    let _one_refresh_at_a_time = slot.refresh.lock().await;
    if fresh() {
        if let Some(v) = slot.current() {
            return Ok(v);
        }
    }
    view::refresh(shared, store, p, false, tally).await
}

/// An error that can mean an object vanished under a stale manifest.
pub(super) trait Vanishable {
    fn vanished(&self) -> bool;
}

impl Vanishable for PartitionError {
    fn vanished(&self) -> bool {
        self.is_missing_segment()
    }
}

impl Vanishable for ReadError {
    fn vanished(&self) -> bool {
        match self {
            ReadError::Partition { source, .. } | ReadError::Index { source, .. } => {
                source.is_missing_segment()
            }
            _ => false,
        }
    }
}

/// Awaits `first`; if an object it needed has vanished (a compaction or
/// a newer index, then GC, since the manifest naming it was read), runs
/// `again` once, which reads that manifest anew (DESIGN section 8). The
/// one place this retry is written.
pub(super) async fn once_more_if_vanished<T, E, A, B>(
    first: A,
    again: impl FnOnce() -> B,
) -> Result<T, E>
where
    E: Vanishable,
    A: Future<Output = Result<T, E>>,
    B: Future<Output = Result<T, E>>,
{
    match first.await {
        Err(e) if e.vanished() => again().await,
        other => other,
    }
}

/// Runs `f` on `view`; if a segment it needs has vanished, refreshes the
/// partition's manifest (forced) and runs `f` once more on the new view.
pub(super) async fn retry_if_vanished<T, F, Fut>(
    shared: &Shared,
    store: &dyn ObjectStore,
    view: Arc<PartitionView>,
    tally: &CacheTally,
    f: F,
) -> Result<T, PartitionError>
where
    F: Fn(Arc<PartitionView>) -> Fut,
    Fut: Future<Output = Result<T, PartitionError>>,
{
    let p = view.partition;
    once_more_if_vanished(f(view), || async {
        let view = {
            let _g = shared.views[p as usize].refresh.lock().await;
            view::refresh(shared, store, p, true, tally).await?
        };
        f(view).await
    })
    .await
}

/// `view` with all its segments (in manifest order), refreshed once if
/// one of them has vanished.
pub(super) async fn with_segments(
    shared: &Shared,
    store: &dyn ObjectStore,
    view: Arc<PartitionView>,
    tally: &CacheTally,
) -> Result<(Arc<PartitionView>, Vec<Arc<Segment>>), PartitionError> {
    retry_if_vanished(shared, store, view, tally, |view| async move {
        let segs = view::segments_of(shared, store, &view, tally).await?;
        Ok((view, segs))
    })
    .await
}
