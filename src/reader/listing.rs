//! The freshness check: one LIST of `_brainy/manifests/` (every manifest
//! and nothing else, see `coord::layout`) shows each manifest's ETag, so
//! a reader learns which of its copies are current in one request,
//! whatever the partition count (issue 30). A copy whose ETag the listing
//! shows unchanged counts as revalidated by the check; only the changed
//! ones are fetched. The store's LIST is read-after-write consistent (S3
//! since 2020; the startup probe checks it, see
//! `store::probe_conditional_writes`), so a strong read that lists after a
//! write was acknowledged sees that write's manifest.
//!
//! `bounded` queries do not wait for the check while the last one is
//! younger than `max_staleness`: past half of it, a query starts one in
//! the background (which fetches the changed manifests too) and reads the
//! copies held. A reader under steady load thus checks about twice per
//! `max_staleness` (one LIST each when nothing changed), and its copies
//! are never older than `max_staleness`: a query that finds one older (an
//! idle reader, a failed background fetch) revalidates it first.

use std::sync::Arc;

use tokio::time::Instant;

use super::load::Freshness;
use super::view::CacheTally;
use super::{Consistency, Shared};
use crate::coord::paths::{manifest_key, INDEX_MANIFEST_KEY};
use crate::store::{Counted, ETag};

/// One check runs at a time; queries that need one meanwhile share it.
pub(crate) type ListingLock = tokio::sync::Mutex<()>;

/// How long a background check may keep retrying a changed manifest.
const BACKGROUND_BUDGET: std::time::Duration = std::time::Duration::from_secs(30);

/// Runs the check `want` needs. Held copies the listing shows unchanged
/// are marked revalidated (by this check's ticket and time), so the loads
/// that follow, under the one freshness rule (`Slot::fresh_for`), fetch
/// only what changed. A `bounded` read whose last check is younger than
/// `max_staleness` does not wait: past half of it, a check starts in the
/// background.
pub(super) async fn check(shared: &Arc<Shared>, store: &Counted, want: Freshness) {
    match want.consistency {
        Consistency::Eventual => return,
        Consistency::Strong => {}
        Consistency::Bounded => {
            let half = Freshness {
                staleness: want.staleness / 2,
                ..want
            };
            if all_fresh(shared, half) {
                return;
            }
            if all_fresh(shared, want) {
                spawn_background(shared, half);
                return;
            }
        }
    }
    if all_fresh(shared, want) {
        return; // nothing held (a cold reader GETs each manifest anyway), or checked for us
    }
    let _one_check_at_a_time = shared.listing.lock().await;
    if !all_fresh(shared, want) {
        list_and_mark(shared, store).await;
    }
}

/// Whether every copy the reader holds (partition views, the shard set)
/// is as fresh as `want` asks; true when it holds none.
fn all_fresh(shared: &Shared, want: Freshness) -> bool {
    let held_fresh = |fresh: bool, held: bool| fresh || !held;
    shared
        .views
        .iter()
        .all(|v| held_fresh(v.fresh_for(want), v.current().is_some()))
        && held_fresh(
            shared.shards.fresh_for(want),
            shared.shards.current().is_some(),
        )
}

/// Starts a check in the background unless one is running; it also
/// fetches what changed, so the queries after it find fresh copies.
fn spawn_background(shared: &Arc<Shared>, want: Freshness) {
    if shared.listing.try_lock().is_err() {
        return; // one is running
    }
    let shared = shared.clone();
    tokio::spawn(async move {
        // Counted as the reader's requests, not the query's that started it.
        let store = Counted::new(shared.store.clone());
        let _one_check_at_a_time = shared.listing.lock().await;
        if all_fresh(&shared, want) {
            return; // a racing task just did it
        }
        let changed = list_and_mark(&shared, &store).await;
        let tally = CacheTally::until(Instant::now() + BACKGROUND_BUDGET);
        for p in changed.partitions {
            let slot = &shared.views[p as usize];
            let _one_refresh_at_a_time = slot.refresh.lock().await;
            if let Err(e) = super::view::refresh(&shared, &store, p, false, &tally).await {
                tracing::warn!(partition = p, error = %e, "background manifest refresh failed; the next check retries");
            }
        }
        if changed.index {
            let fresh = Freshness {
                consistency: Consistency::Strong,
                staleness: shared.opts.max_staleness,
                ticket: shared.next_ticket(),
            };
            if let Err(e) = super::shards::ensure_shards(&shared, &store, fresh, &[]).await {
                tracing::warn!(error = %e, "background index refresh failed; the next check retries");
            }
        }
    });
}

/// What a check found changed (or could not vouch for).
#[derive(Default)]
struct Changed {
    partitions: Vec<u32>,
    index: bool,
}

/// One LIST: every held copy whose ETag it shows unchanged is marked
/// revalidated by this check; the rest are returned. A failed LIST marks
/// nothing (each copy is then revalidated on its own, as before).
async fn list_and_mark(shared: &Shared, store: &Counted) -> Changed {
    let ticket = shared.next_ticket();
    let at = Instant::now();
    let listed = match crate::coord::layout::manifest_etags(store).await {
        Ok(listed) => listed,
        Err(e) => {
            tracing::warn!(error = %e, "listing the manifests failed; revalidating each instead");
            return Changed {
                partitions: (0..shared.views.len() as u32)
                    .filter(|&p| shared.views[p as usize].current().is_some())
                    .collect(),
                index: shared.shards.current().is_some(),
            };
        }
    };
    let trust_all = crate::mutation::active(crate::mutation::Mutation::ListingTrustsAll);
    let same = |key: &str, held: Option<&ETag>| {
        trust_all || matches!((listed.get(key), held), (Some(l), Some(h)) if l.same_as(h))
    };
    let mut changed = Changed::default();
    for (p, slot) in shared.views.iter().enumerate() {
        let p = p as u32;
        match slot.current() {
            Some(v) if same(&manifest_key(p), v.etag.as_ref()) => slot.touch(at, ticket),
            Some(_) => changed.partitions.push(p),
            None => {} // never loaded: a query loads it when it needs it
        }
    }
    match shared.shards.current() {
        Some(v) if same(INDEX_MANIFEST_KEY, v.etag.as_ref()) => shared.shards.touch(at, ticket),
        Some(_) => changed.index = true,
        None => {}
    }
    changed
}
