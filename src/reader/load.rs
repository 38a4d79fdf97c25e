//! Loading a partition for a query: a view as fresh as the consistency
//! level asks for, its segments through the cache, and the one retry a
//! vanished segment gets (DESIGN section 8: a segment that is gone means
//! our manifest predates a compaction plus GC: refresh and retry once).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use super::view::{self, CacheTally, PartitionView};
use super::{Consistency, PartitionError, Shared};
use crate::segment::Segment;
use crate::store::ObjectStore;

/// How fresh a view must be, and the ticket of the operation asking.
#[derive(Clone, Copy, Debug)]
pub(super) struct Freshness {
    pub consistency: Consistency,
    pub staleness: Duration,
    pub ticket: u64,
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
    let fresh = || {
        let checked = slot.checked_at();
        match want.consistency {
            Consistency::Eventual => checked.is_some(),
            Consistency::Bounded => checked.is_some_and(|t| t.elapsed() < want.staleness),
            // Revalidated by a refresh that began after this operation did
            // (ours or a concurrent query's).
            Consistency::Strong => slot.checked_ticket() > want.ticket,
        }
    };
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
    match f(view).await {
        Err(e) if e.is_missing_segment() => {
            let view = {
                let _g = shared.views[p as usize].refresh.lock().await;
                view::refresh(shared, store, p, true, tally).await?
            };
            f(view).await
        }
        other => other,
    }
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
