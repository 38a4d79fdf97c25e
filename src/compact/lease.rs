//! The indexer lease (DESIGN section 11, "Races"), held around a round's
//! work: taken, renewed while the work runs, given back when it ends.
//!
//! **An efficiency device, not a safety one.** Two indexers running at
//! once are still correct: each round commits by compare-and-swap on the
//! index manifest's generation, only one wins, and the loser's shards and
//! deletion vectors are orphans for GC. The lease only keeps a second
//! indexer from doing the same work for nothing. That is why it may be
//! short, why clock skew between hosts (the holder writes the expiry with
//! its clock, a contender reads it with its own) can only cost duplicate
//! work, and why its holder gives up as soon as renewal finds it taken.
//!
//! **Short and renewed** (issue 28 F6). The lease lasts [`LEASE_TTL`] and
//! its holder renews it every [`LEASE_RENEW_EVERY`] while the work runs,
//! by a renewal loop polled with the work in the same future, never a
//! task of its own: when the work ends, fails or is dropped (a compactor
//! invocation that ran out of time, a killed process), renewal stops
//! with it. A live holder therefore keeps the lease however long a step
//! takes (a shard build, a 512 MB PUT); a dead one loses it within
//! [`LEASE_TTL`]. The work's end releases it (cleared from the index
//! manifest); a caller that drops the work calls [`release`] itself.

use std::future::Future;
use std::time::Duration;

use crate::coord::clock::DynClock;
use crate::coord::index_manifest::{acquire_lease, release_lease, LeaseHeld};
use crate::coord::CoordError;
use crate::store::ObjectStore;

/// How long the lease lasts unless its holder renews it: about how long
/// a crashed indexer keeps every other one out.
pub const LEASE_TTL: Duration = Duration::from_secs(60);

/// How often a working holder renews the lease: three renewals per
/// [`LEASE_TTL`], so one slow or failed renewal does not lose it.
pub const LEASE_RENEW_EVERY: Duration = Duration::from_secs(20);

/// Runs `work` as the lease's `holder`: takes the lease (or returns
/// `Err` naming who holds it, without running `work`), renews it while
/// `work` runs and releases it when `work` ends, whatever its result. If
/// a renewal finds the lease taken by another indexer (this holder was
/// frozen past the TTL), `work` is dropped where it stands, as a crash
/// would leave it, and `Err` names the new holder.
pub(crate) async fn with_lease<T>(
    store: &dyn ObjectStore,
    partition_count: u32,
    holder: &str,
    clock: &DynClock,
    work: impl Future<Output = T>,
) -> Result<Result<T, LeaseHeld>, CoordError> {
    let n = partition_count;
    if let Err(held) = acquire_lease(store, n, holder, clock.now(), LEASE_TTL).await? {
        return Ok(Err(held));
    }
    // `biased`: the work first, and no randomness in which branch is
    // polled (the simulation replays runs exactly).
    let outcome = tokio::select! {
        biased;
        done = work => Ok(done),
        lost = renew(store, n, holder, clock) => Err(lost),
    };
    match &outcome {
        Ok(_) => release(store, n, holder).await,
        Err(lost) => tracing::warn!(
            holder = %lost.holder,
            "another indexer took the lease over; this round stops"
        ),
    }
    Ok(outcome)
}

/// Renews `holder`'s lease every [`LEASE_RENEW_EVERY`] until another
/// holder has it (the answer). A renewal that fails is logged and tried
/// again at the next tick: the lease still has two thirds of its TTL.
async fn renew(
    store: &dyn ObjectStore,
    partition_count: u32,
    holder: &str,
    clock: &DynClock,
) -> LeaseHeld {
    loop {
        tokio::time::sleep(LEASE_RENEW_EVERY).await;
        let now = clock.now();
        match acquire_lease(store, partition_count, holder, now, LEASE_TTL).await {
            Ok(Ok(_)) => {}
            Ok(Err(held)) => return held,
            Err(e) => tracing::warn!(error = %e, "could not renew the indexer lease; retrying"),
        }
    }
}

/// Gives `holder`'s lease back (a no-op if another holder has it). A
/// failure is only logged: the lease expires by itself within
/// [`LEASE_TTL`].
pub(crate) async fn release(store: &dyn ObjectStore, partition_count: u32, holder: &str) {
    if let Err(e) = release_lease(store, partition_count, holder).await {
        tracing::warn!(error = %e, "could not release the indexer lease; it expires by itself");
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::coord::cas::Backoff;
    use crate::coord::clock::{format_time, parse_time, TokioClock};
    use crate::coord::index_manifest::{
        create_index_manifest, read_index_manifest, update_index, Lease,
    };
    use crate::store::memory::MemoryStore;

    async fn lease(store: &MemoryStore) -> Option<Lease> {
        read_index_manifest(store, 1)
            .await
            .unwrap()
            .unwrap()
            .0
            .lease
    }

    #[tokio::test(start_paused = true)]
    async fn a_holder_renews_while_working_releases_after_and_stops_once_taken_over() {
        let store = MemoryStore::unique();
        create_index_manifest(&store, 1).await.unwrap();
        let clock: DynClock = Arc::new(TokioClock::new());
        // Working for five TTLs: still the holder, with most of a TTL left.
        let work = async {
            tokio::time::sleep(LEASE_TTL * 5).await;
            lease(&store).await
        };
        let held = with_lease(&store, 1, "a", &clock, work).await.unwrap();
        let held = held.unwrap().expect("held while working");
        assert_eq!(held.holder, "a");
        let left = parse_time(&held.expires_at)
            .unwrap()
            .duration_since(clock.now())
            .unwrap_or_default();
        // (Expiry times are written to the millisecond.)
        let renewed = LEASE_TTL - LEASE_RENEW_EVERY - Duration::from_millis(1);
        assert!(left >= renewed, "{left:?} left");
        assert_eq!(lease(&store).await, None, "released when the work ended");
        // Another holder has it: the work does not run.
        let b = Lease {
            holder: "b".into(),
            expires_at: format_time(clock.now() + LEASE_TTL),
        };
        let take = |l: Lease| {
            update_index(&store, 1, Backoff::default(), move |m| {
                m.lease = Some(l.clone());
                Ok(true)
            })
        };
        take(b).await.unwrap();
        let out = with_lease(&store, 1, "a", &clock, async { unreachable!() }).await;
        assert_eq!(out.unwrap().unwrap_err().holder, "b");
        // "a" frozen past its TTL, "b" took over: a's next renewal finds
        // it and its work stops there; b keeps the lease.
        tokio::time::sleep(LEASE_TTL).await;
        let work = async {
            let c = Lease {
                holder: "c".into(),
                expires_at: format_time(clock.now() + LEASE_TTL * 10),
            };
            take(c).await.unwrap();
            std::future::pending::<()>().await
        };
        let out = with_lease(&store, 1, "a", &clock, work).await.unwrap();
        assert_eq!(out.unwrap_err().holder, "c");
        assert_eq!(lease(&store).await.unwrap().holder, "c");
    }
}
