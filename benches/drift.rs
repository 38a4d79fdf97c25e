//! Drift: an index built in rounds from data that arrives in an order
//! (e.g. sorted by domain, so later rows fall where the first routing
//! had few), against the same data shuffled. Each of `--rounds` chunks
//! is upserted and indexed (a forced round: a new routing when the index
//! has outgrown its own, shards moved to it); then every query is
//! searched once by a fresh reader. Reports recall@10, codes scanned and
//! p50 per query, the routings trained and the largest clusters (rows
//! per cluster, from the shards' heads, over the mean).
//!
//! ```sh
//! D=../shared/datasets/debian-pkgdesc-minilm384
//! python3 scripts/domain-order.py $D 250000 > /tmp/nc250k-by-domain.txt
//! cargo bench --bench drift -- --dir /tmp/nc250k --bucket /tmp/drift-sorted --order /tmp/nc250k-by-domain.txt
//! cargo bench --bench drift -- --dir /tmp/nc250k --bucket /tmp/drift-shuffled
//! ```

use std::time::Instant;

use clap::Parser;
use shoal::coord::index_manifest::read_index_manifest;
use shoal::coord::{Metric, RequestedSettings, Role};
use shoal::reader::{Consistency, SearchRequest};
use shoal::record::Record;
use shoal::{Db, OpenOptions};

#[derive(Parser)]
struct Args {
    /// A TEXMEX dataset: base.fvecs, query.fvecs, groundtruth.ivecs.
    #[arg(long)]
    dir: String,
    #[arg(long)]
    bucket: String,
    /// A file of base row numbers, one per line: the order rows arrive
    /// in (default: the base's own order).
    #[arg(long)]
    order: Option<String>,
    #[arg(long, default_value_t = 16)]
    rounds: usize,
    #[arg(long, default_value_t = 16)]
    partitions: u32,
    /// cargo bench passes --bench; accept and ignore it.
    #[arg(long, hide = true)]
    bench: bool,
}

fn open_options(role: Role, dims: usize) -> OpenOptions {
    OpenOptions {
        cluster: shoal::api::JoinOptions {
            settings: RequestedSettings {
                dimensions: Some(dims as u32),
                distance_metric: Some(Metric::Cosine),
                ..Default::default()
            },
            role: Some(role),
            background_heartbeat: false,
            ..Default::default()
        },
        ..Default::default()
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let base = shoal::dataset::read_fvecs(format!("{}/base.fvecs", args.dir))?;
    let queries = shoal::dataset::read_fvecs(format!("{}/query.fvecs", args.dir))?;
    let truth = shoal::dataset::read_ivecs(format!("{}/groundtruth.ivecs", args.dir))?;
    let dims = base[0].len();
    let order: Vec<usize> = match &args.order {
        None => (0..base.len()).collect(),
        Some(f) => std::fs::read_to_string(f)?
            .lines()
            .map(|l| l.trim().parse())
            .collect::<Result<_, _>>()?,
    };
    anyhow::ensure!(
        order.len() == base.len(),
        "the order names every base row once"
    );
    let mut requested = open_options(Role::Writer, dims);
    requested.cluster.settings.partition_count = Some(args.partitions);
    let db = Db::open(&args.bucket, requested).await?;
    let per = order.len().div_ceil(args.rounds);
    let started = Instant::now();
    let mut generations = Vec::new();
    for (r, chunk) in order.chunks(per).enumerate() {
        let recs: Vec<Record> = chunk
            .iter()
            .map(|&i| Record::new(i.to_string(), base[i].clone()))
            .collect();
        for batch in recs.chunks(2000) {
            db.upsert(batch).await?;
        }
        let round = db.index(true).await?;
        let store = shoal::store::open(&args.bucket).await?;
        let (m, _) = read_index_manifest(store.as_ref(), args.partitions)
            .await?
            .ok_or_else(|| anyhow::anyhow!("no index manifest"))?;
        let g = m
            .current_routing()
            .map(|r| (r.generation, r.clusters, r.trained_rows));
        if generations.last().map(|x: &(u64, u32, u64)| x.0) != g.map(|x| x.0) {
            if let Some(g) = g {
                println!(
                    "round {r}: routing {} trained for {} rows, {} clusters",
                    g.0, g.2, g.1
                );
                generations.push(g);
            }
        }
        println!(
            "round {r}: {} rows in, {} merged, {} shards",
            round.records_in,
            round.merged.len(),
            m.shards.len()
        );
    }
    let build_s = started.elapsed().as_secs_f64();
    db.close().await?;

    let reader = Db::open(&args.bucket, open_options(Role::Reader, dims)).await?;
    reader.warm_up().await?;
    let (mut found, mut codes, mut ms) = (0usize, 0u64, Vec::new());
    for (q, t) in queries.iter().zip(&truth) {
        let mut req = SearchRequest::new(q.clone(), 10);
        req.consistency = Consistency::Eventual;
        let t0 = Instant::now();
        let resp = reader.search(&req).await?;
        ms.push(t0.elapsed().as_secs_f64() * 1e3);
        codes += resp.stats.codes_scanned;
        let want: Vec<String> = t.iter().take(10).map(|i| i.to_string()).collect();
        found += resp.results.iter().filter(|h| want.contains(&h.id)).count();
    }
    ms.sort_by(f64::total_cmp);
    let n = queries.len();
    println!(
        "drift bench: {} rows x {dims}-d in {} rounds, order {}",
        base.len(),
        args.rounds,
        args.order.as_deref().unwrap_or("as stored")
    );
    println!("  build seconds        {build_s:.1}");
    println!("  routings trained     {}", generations.len());
    if let Some(g) = generations.last() {
        println!("  last routing         {} clusters for {} rows", g.1, g.2);
    }
    println!(
        "  recall@10            {:.4}",
        found as f64 / (10 * n) as f64
    );
    println!("  codes per query      {}", codes / n as u64);
    println!("  p50 ms               {:.3}", ms[n / 2]);
    reader.close().await?;
    Ok(())
}
