//! `init`, `status`, `verify`, `probe`.

use anyhow::{bail, Result};
use shoal::coord::clock::{Clock, SystemClock};
use shoal::coord::RequestedSettings;
use shoal::store::ObjectStore;

use super::{Ctx, InitArgs};

pub async fn init(ctx: &Ctx, a: InitArgs) -> Result<()> {
    let store = ctx.store().await?;
    let requested = RequestedSettings {
        partition_count: Some(a.partitions),
        dimensions: Some(a.dimensions),
        distance_metric: Some(a.metric.into()),
        embedding_model: a.model,
        instance_timeout_seconds: None,
    };
    let cluster = ctx.join_writer(store.clone(), requested).await?;
    let config = cluster.config().clone();
    cluster.leave().await?;
    if ctx.json {
        return ctx.print_json(&config);
    }
    let s = &config.settings;
    println!("index ready at {}", store.describe());
    println!(
        "  {} dimensions, {} metric, {} partitions, model {}",
        s.dimensions, s.distance_metric, s.partition_count, s.embedding_model
    );
    Ok(())
}

pub async fn status(ctx: &Ctx) -> Result<()> {
    let store = ctx.store().await?;
    let config = ctx.config(&store).await?;
    let st = shoal::inspect::status(&store, &config, SystemClock.now()).await?;
    if ctx.json {
        return ctx.print_json(&st);
    }
    let s = &config.settings;
    println!("index      {}", st.store);
    println!(
        "config     {} dimensions, {} metric, {} partitions, model {}, updated {}",
        s.dimensions, s.distance_metric, s.partition_count, s.embedding_model, config.updated
    );
    println!("instances  {} registered", st.instances.len());
    for i in &st.instances {
        let m = &i.record.metrics;
        println!(
            "  {:<40} {:<6} {:<5} heartbeat {:>6} ago  vectors {:>9}  queries {:>7}  writes {:>7}  cache hit {:>5.1}%",
            i.record.instance_id,
            i.record.role.as_str(),
            if i.alive { "alive" } else { "stale" },
            i.heartbeat_age_s.map_or("?".into(), |a| format!("{a:.0}s")),
            m.vector_count,
            m.queries,
            m.writes,
            m.cache_hit_rate * 100.0
        );
    }
    let t = &st.totals;
    println!(
        "data       {} segments, {} records ({} tombstones), {:.1} MB, {:.0}% indexed",
        t.segments,
        t.records,
        t.tombstones,
        t.bytes as f64 / 1e6,
        t.indexed_fraction * 100.0
    );
    println!("partitions (non-empty):");
    println!(
        "  {:>5} {:>8} {:>10} {:>10} {:>10} {:>8}",
        "part", "segments", "records", "tombstones", "MB", "indexed"
    );
    for p in st.partitions.iter().filter(|p| p.segments > 0) {
        println!(
            "  {:>5} {:>8} {:>10} {:>10} {:>10.2} {:>7.0}%",
            p.partition,
            p.segments,
            p.records,
            p.tombstones,
            p.bytes as f64 / 1e6,
            p.indexed_fraction * 100.0
        );
    }
    let r = &st.requests;
    println!(
        "requests   GET {} PUT {} LIST {} HEAD {} DELETE {} (304: {}, 404: {}, 412: {})",
        r.get, r.put, r.list, r.head, r.delete, r.not_modified, r.not_found, r.precondition_failed
    );
    Ok(())
}

pub async fn verify(ctx: &Ctx) -> Result<()> {
    let store = ctx.store().await?;
    let config = ctx.config(&store).await?;
    let report = shoal::inspect::verify(store.as_ref(), &config).await?;
    if ctx.json {
        ctx.print_json(&report)?;
    } else {
        println!(
            "verified {}: {} manifests, {} segments, {} records, {:.1} MB",
            store.describe(),
            report.manifests,
            report.segments,
            report.records,
            report.bytes as f64 / 1e6
        );
        for o in &report.orphans {
            println!("orphan   {o} (unreferenced; `shoal gc` removes it after the grace period)");
        }
        for p in &report.problems {
            println!("PROBLEM  {}: {}", p.key, p.message);
        }
        if report.is_clean() {
            println!("ok: no problems ({} orphans)", report.orphans.len());
        }
    }
    if !report.is_clean() {
        bail!("verify found {} problem(s)", report.problems.len());
    }
    Ok(())
}

pub async fn probe(ctx: &Ctx) -> Result<()> {
    let store = ctx.store().await?;
    shoal::store::probe_conditional_writes(store.as_ref()).await?;
    if ctx.json {
        return ctx.print_json(&serde_json::json!({
            "store": store.describe(),
            "conditionalWrites": "enforced",
            "requests": store.counts(),
        }));
    }
    println!(
        "{}: conditional writes are enforced ({} requests)",
        store.describe(),
        store.counts().total()
    );
    Ok(())
}
