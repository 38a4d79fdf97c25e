//! Warming a reader: every partition and the shard set loaded now, and
//! (for [`warm_up`]) the codes of every list of every range-read shard,
//! so the first query only fetches the rows it reranks.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::load::Freshness;
use super::snapshot::{Snapshot, Want};
use super::view::CacheTally;
use super::{Consistency, ReadError, Shared, WarmReport};
use crate::store::Counted;

/// [`warm`], then the codes of every list of every range-read shard.
pub(super) async fn warm_up(shared: &Arc<Shared>) -> Result<WarmReport, ReadError> {
    let started = Instant::now();
    let counted = Counted::new(shared.store.clone());
    let snap = load_all(shared, &counted).await?;
    let tally = CacheTally::until(Instant::now() + shared.opts.deadline);
    let warming = snap
        .shards
        .shards
        .iter()
        .map(|s| s.warm(&shared.blocks, &counted, &tally));
    let lists: u64 = futures::future::try_join_all(warming).await?.iter().sum();
    for r in snap.shards.routings() {
        r.warm(&shared.blocks, &counted, &tally)
            .await
            .map_err(|e| super::shards::index_error(&e))?;
    }
    Ok(WarmReport {
        live_records: snap.live_total(shared, &counted, &tally).await?,
        shards: snap.shards.shards.len() as u64,
        code_lists: lists,
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
