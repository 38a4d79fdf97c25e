//! Warming a reader: every partition and the shard set loaded now, and
//! (for [`warm_up`]) the routings' groups, the shards' codes, then their
//! rows, as far as the part cache's budget holds them: the first query
//! fetches nothing the cache could have held.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::load::Freshness;
use super::ranged::{WarmBudget, WarmPhase};
use super::snapshot::{Snapshot, Want};
use super::view::CacheTally;
use super::{Consistency, ReadError, Shared, WarmReport};
use crate::store::Counted;

/// [`warm`], then the routings' groups, the shards' codes and then their
/// rows, as far as the part cache holds them and, with `limit`, until
/// that much time has passed since it started (what it cached by then
/// stays; the report says it was cut short).
pub(super) async fn warm_up(
    shared: &Arc<Shared>,
    limit: Option<Duration>,
) -> Result<WarmReport, ReadError> {
    let started = Instant::now();
    let counted = Counted::new(shared.store.clone());
    let snap = load_all(shared, &counted).await?;
    let tally = CacheTally::until(Instant::now() + shared.opts.deadline);
    // What the part cache can keep, routings first (every query routes),
    // then the shards in turn: fetching more would only be evicted, and
    // holding it at once could outgrow the process (a 4M-row index's
    // probe blocks are ~700 MB).
    let mut budget = WarmBudget {
        bytes: shared.blocks.capacity(),
        until: limit.map(|l| started + l),
        timed_out: false,
    };
    for r in snap.shards.routings() {
        r.warm(&shared.blocks, &counted, &tally, &mut budget)
            .await
            .map_err(|e| super::shards::index_error(&e))?;
    }
    let mut lists = 0;
    for s in &snap.shards.shards {
        lists += s
            .warm(&shared.blocks, &counted, &tally, &mut budget, WarmPhase::Codes)
            .await?;
    }
    // Then the rows a query reranks (and the metadata it returns), while
    // the budget lasts: an index whose rows fit the cache is served from
    // memory alone. The budget is charged stored bytes, and parsed
    // metadata weighs more than it is stored: the rows are held to half
    // the room the cache has left by weight, batch by batch, so they
    // fill it without evicting a code. None if a code did not fit.
    if budget.bytes > 0 {
        shared.blocks.hold_to_room(&mut budget.bytes).await;
    }
    let mut row_chunks = 0;
    for s in &snap.shards.shards {
        row_chunks += s
            .warm(&shared.blocks, &counted, &tally, &mut budget, WarmPhase::Rows)
            .await?;
    }
    shared.blocks.run_pending_tasks().await;
    shared.cache.run_pending_tasks().await;
    Ok(WarmReport {
        live_records: snap.live_total(shared, &counted, &tally).await?,
        shards: snap.shards.shards.len() as u64,
        code_lists: lists,
        row_chunks,
        cut_short: budget.timed_out,
        cache_bytes: shared.cache.weighted_size() + shared.blocks.weighted_size(),
        requests: counted.counts(),
        ms: started.elapsed().as_secs_f64() * 1e3,
    })
}

/// Loads every partition now, so the first query is warm. Returns the
/// live records.
pub(super) async fn warm(shared: &Arc<Shared>) -> Result<u64, ReadError> {
    let counted = Counted::new(shared.store.clone());
    let snap = load_all(shared, &counted).await?;
    let tally = CacheTally::until(Instant::now() + shared.opts.deadline);
    snap.live_total(shared, &counted, &tally).await
}

/// A strong snapshot of every partition with its segments, through
/// `counted`.
async fn load_all(shared: &Arc<Shared>, counted: &Counted) -> Result<Snapshot, ReadError> {
    let tally = CacheTally::until(Instant::now() + shared.opts.deadline);
    let want = Want {
        fresh: Freshness {
            consistency: Consistency::Strong,
            staleness: Duration::ZERO,
            ticket: shared.next_ticket(),
        },
        segments: true,
        allow_partial: false,
    };
    let partitions = 0..shared.views.len() as u32;
    Snapshot::load(shared, counted, partitions, want, &tally).await
}
