//! Index build: one forced indexer round (and the merges it runs) over
//! whatever the bucket's tails hold, under one routing (the default) or
//! with shards of their own IVF (`--legacy`, the layout before issue
//! 29). Reports
//! the seconds, the shards written and this process's peak resident
//! memory (the indexer's: nothing else runs in it).
//!
//! ```sh
//! cargo bench --bench ingest -- --bucket /tmp/ib --records 1000000 --base /tmp/nc1m/base.fvecs
//! cp -a /tmp/ib /tmp/ib-legacy
//! cargo bench --bench index_build -- --bucket /tmp/ib
//! cargo bench --bench index_build -- --bucket /tmp/ib-legacy --legacy
//! ```
//!
//! `--round-rows N` sets the records each of the forced call's rounds
//! takes (`--round-rows 100000000`: every tail in one round).

use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use shoal::compact::indexer::{index_round, IndexOptions};
use shoal::coord::clock::{DynClock, SystemClock};
use shoal::coord::index_manifest::read_index_manifest;
use shoal::store::ObjectStore;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    bucket: String,
    /// Build shards with their own IVF (the layout before one routing).
    #[arg(long)]
    legacy: bool,
    /// Records per round of the forced call (default: the indexer's
    /// `ROUND_ROWS`); a huge value takes every tail in one round, as the
    /// indexer did before issue 29's bounded rounds.
    #[arg(long)]
    round_rows: Option<u64>,
    /// cargo bench passes --bench; accept and ignore it.
    #[arg(long, hide = true)]
    bench: bool,
}

fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    kb / 1024.0
}

fn main() -> anyhow::Result<()> {
    // The runtime the compactor Lambda and the CLI run on.
    shoal::runtime()?.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    let store = shoal::store::open(&args.bucket).await?;
    let config = shoal::coord::config::read_config(store.as_ref())
        .await?
        .ok_or_else(|| anyhow::anyhow!("{} holds no index", args.bucket))?;
    let settings = config.0.settings;
    let clock: DynClock = Arc::new(SystemClock);
    let opts = IndexOptions {
        force: true,
        legacy: args.legacy,
        round_rows: args.round_rows,
        ..Default::default()
    };
    let t = Instant::now();
    let round = index_round(store.as_ref(), &settings, "bench", &clock, opts).await?;
    let seconds = t.elapsed().as_secs_f64();
    let (m, _) = read_index_manifest(store.as_ref(), settings.partition_count)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no index manifest"))?;
    println!(
        "index build ({}) of {}",
        if args.legacy {
            "per-shard IVF"
        } else {
            "routed"
        },
        store.describe()
    );
    println!("  rows in      {}", round.records_in);
    println!("  commits      {}", m.generation);
    println!("  seconds      {seconds:.1}");
    println!(
        "  shards       {} ({} merges)",
        m.shards.len(),
        round.merged.len()
    );
    if let Some(r) = m.current_routing() {
        println!(
            "  routing      {} clusters for {} rows",
            r.clusters, r.trained_rows
        );
    }
    println!("  peak RSS MB  {:.0}", peak_rss_mb());
    Ok(())
}
