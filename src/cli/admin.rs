//! `init`, `status`, `verify`, `probe`.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Result};
use shoal::api::{
    CompactRequest, GcOptions, JoinOptions, Outcome, RepairOptions, RequestedSettings, Role,
    TextField,
};
use shoal::OpenOptions;

use super::{ConfigCommand, Ctx, InitArgs};

/// `--text-field KEY[=ANALYZER]` flags as settings (`None` when there
/// are none: whatever an existing index has). Analyzer names are checked
/// with the rest of the settings, before anything is written.
fn text_fields(flags: &[String]) -> Option<BTreeMap<String, TextField>> {
    if flags.is_empty() {
        return None;
    }
    let field = |f: &String| {
        let (key, analyzer) = f.split_once('=').unwrap_or((f, "standard"));
        let analyzer = analyzer.to_string();
        (key.to_string(), TextField { analyzer })
    };
    Some(flags.iter().map(field).collect())
}

pub(super) async fn init(ctx: &Ctx, a: InitArgs) -> Result<()> {
    let requested = RequestedSettings {
        partition_count: Some(a.partitions),
        dimensions: Some(a.dimensions),
        distance_metric: Some(a.metric.into()),
        embedding_model: a.model,
        instance_timeout_seconds: None,
        text_fields: text_fields(&a.text_fields),
    };
    let wanted = requested.text_fields.clone();
    let db = ctx
        .open(OpenOptions {
            cluster: JoinOptions {
                settings: requested,
                role: Some(ctx.role.unwrap_or(Role::Writer)),
                ..Default::default()
            },
            ..Default::default()
        })
        .await?;
    let config = db.config().clone();
    db.close().await?;
    if wanted.is_some() && wanted != config.settings.text_fields {
        bail!(
            "the index exists with other full-text fields ({}); change them with `shoal config \
             set 'textFields={}'`",
            serde_json::to_string(&config.settings.text_fields)?,
            serde_json::to_string(&wanted)?
        );
    }
    if ctx.json {
        return ctx.print_json(&config);
    }
    let s = &config.settings;
    println!("index ready at {}", db.describe());
    println!(
        "  {} dimensions, {} metric, {} partitions, model {}",
        s.dimensions, s.distance_metric, s.partition_count, s.embedding_model
    );
    for (key, f) in s.text_fields.iter().flatten() {
        println!("  full-text searchable: {key} (analyzer {})", f.analyzer);
    }
    Ok(())
}

pub(super) async fn config(ctx: &Ctx, c: ConfigCommand) -> Result<()> {
    match c {
        ConfigCommand::Show => {
            let db = ctx.observe().await?;
            println!("{}", serde_json::to_string_pretty(&*db.config())?);
            db.close().await?;
        }
        ConfigCommand::Set { changes } => {
            let mut parsed = Vec::with_capacity(changes.len());
            for c in &changes {
                let Some((key, value)) = c.split_once('=') else {
                    bail!("{c:?} is not KEY=VALUE (e.g. gcGraceSeconds=1800)");
                };
                let value = serde_json::from_str(value)
                    .unwrap_or_else(|_| serde_json::Value::String(value.to_string()));
                parsed.push((key.trim().to_string(), value));
            }
            let db = ctx.observe().await?;
            let config = db.set_settings(&parsed).await;
            db.close().await?;
            let config = config?;
            if ctx.json {
                return ctx.print_json(&config);
            }
            println!("{}", serde_json::to_string_pretty(&config.settings)?);
            eprintln!(
                "changed {}; running instances take the new settings within 30 s",
                changes.join(", ")
            );
        }
    }
    Ok(())
}

pub(super) async fn status(ctx: &Ctx, live: bool) -> Result<()> {
    let db = ctx.observe().await?;
    let st = db.status(live).await?;
    if ctx.json {
        ctx.print_json(&st)?;
    } else {
        print_status(&st, live);
    }
    if !st.problems.is_empty() {
        bail!("status found {} problem(s)", st.problems.len());
    }
    Ok(())
}

fn print_status(st: &shoal::api::Status, live: bool) {
    let config = &st.config;
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
    if let (Some(l), Some(d)) = (t.live, t.dead) {
        println!("           {l} live, {d} dead (shadowed versions and tombstones)");
    }
    let count = |n: Option<u64>| n.map_or(String::new(), |n| n.to_string());
    let (live_head, dead_head) = if live { ("live", "dead") } else { ("", "") };
    println!("partitions (non-empty):");
    let head = format!(
        "  {:>5} {:>8} {:>10} {:>10} {:>10} {:>8} {live_head:>10} {dead_head:>10}",
        "part", "segments", "records", "tombstones", "MB", "indexed"
    );
    println!("{}", head.trim_end());
    for p in st.partitions.iter().filter(|p| p.segments > 0) {
        let row = format!(
            "  {:>5} {:>8} {:>10} {:>10} {:>10.2} {:>7.0}% {:>10} {:>10}",
            p.partition,
            p.segments,
            p.records,
            p.tombstones,
            p.bytes as f64 / 1e6,
            p.indexed_fraction * 100.0,
            count(p.live),
            count(p.dead)
        );
        println!("{}", row.trim_end());
    }
    let ix = &st.index;
    println!(
        "index      generation {}, {} shard(s), {} live rows, {:.2} MB; tails {} records, \
         indexing lag {:.0} s{}",
        ix.generation,
        ix.shards.len(),
        ix.live_rows,
        ix.bytes as f64 / 1e6,
        ix.tail_records,
        ix.lag_seconds,
        ix.lease_holder
            .as_ref()
            .map_or(String::new(), |h| format!(", indexer at work: {h}"))
    );
    if let Some(r) = &ix.routing {
        let calibrated = if r.calibrated_probes == 0 {
            "not calibrated (small sample)".to_string()
        } else {
            format!("calibrated {} probes", r.calibrated_probes)
        };
        println!(
            "routing    generation {}: {} clusters for {} rows ({} now), {calibrated}; \
             a query probes {} clusters at the default nprobe{}",
            r.generation,
            r.clusters,
            r.trained_rows,
            r.rows,
            r.probes_at_default_nprobe,
            if r.live_routings > 1 {
                format!("; {} routings live while shards move", r.live_routings)
            } else {
                String::new()
            }
        );
    }
    for sh in &ix.shards {
        println!(
            "  shard {} level {}: {} rows ({} dead), {:.2} MB",
            sh.key,
            sh.level,
            sh.rows,
            sh.dead,
            sh.bytes as f64 / 1e6
        );
    }
    let r = &st.requests;
    println!(
        "requests   GET {} PUT {} LIST {} HEAD {} DELETE {} (304: {}, 404: {}, 412: {})",
        r.get, r.put, r.list, r.head, r.delete, r.not_modified, r.not_found, r.precondition_failed
    );
    for p in &st.problems {
        println!("PROBLEM  {}: {}", p.key, p.message);
    }
}

pub(super) async fn verify(ctx: &Ctx) -> Result<()> {
    let db = ctx.observe().await?;
    let report = db.verify().await?;
    if ctx.json {
        ctx.print_json(&report)?;
    } else {
        println!(
            "verified {}: {} manifests, {} segments, {} records, {:.1} MB; {} index shard(s), \
             {} live rows",
            db.describe(),
            report.manifests,
            report.segments,
            report.records,
            report.bytes as f64 / 1e6,
            report.shards,
            report.shard_rows
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

pub(super) async fn repair_shard(ctx: &Ctx, key: &str, dry_run: bool) -> Result<()> {
    let db = ctx.observe().await?;
    let report = db.repair_shard(key, dry_run).await?;
    if ctx.json {
        return ctx.print_json(&report);
    }
    for id in &report.lost_ids {
        println!("LOST  {id}");
    }
    if report.lost_unknown > 0 {
        println!(
            "LOST  {} live rows whose ids are unknown (the shard's head is unreadable)",
            report.lost_unknown
        );
    }
    let verb = if report.written {
        "rebuilt"
    } else {
        "would rebuild"
    };
    println!(
        "{verb} {} : {} of {} live rows kept, {} lost{}",
        report.shard,
        report.kept,
        report.live,
        report.lost_ids.len() as u64 + report.lost_unknown,
        match report.replaced_by.as_slice() {
            [] => String::new(),
            keys => format!("; replaced by {}", keys.join(", ")),
        }
    );
    Ok(())
}

pub(super) async fn repair(ctx: &Ctx, partition: u32, dry_run: bool, force: bool) -> Result<()> {
    let db = ctx.observe().await?;
    let report = db
        .repair(partition, RepairOptions { dry_run, force })
        .await?;
    if ctx.json {
        ctx.print_json(&report)?;
    } else {
        for s in &report.segments {
            println!(
                "seq {:>5}  {}  {} records ({} tombstones), written {} by {}",
                s.seq, s.key, s.records, s.tombstones, s.created_at, s.writer_id
            );
        }
        for (key, e) in &report.unreadable {
            println!("UNREADABLE  {key}: {e}");
        }
        for u in &report.uncertain {
            println!("UNCERTAIN  {u}");
        }
        if report.written {
            println!(
                "rebuilt {} with {} segment(s){}",
                report.manifest,
                report.segments.len(),
                if report.uncertain.is_empty() {
                    String::new()
                } else {
                    format!(
                        " ({} uncertain order(s) accepted by --force)",
                        report.uncertain.len()
                    )
                }
            );
        }
    }
    if let Some(why) = &report.refused {
        bail!("{} not rebuilt: {why}", report.manifest);
    }
    Ok(())
}

pub(super) async fn probe(ctx: &Ctx) -> Result<()> {
    let report = shoal::probe(&ctx.bucket).await?;
    if ctx.json {
        return ctx.print_json(&report);
    }
    println!(
        "{}: conditional writes are enforced ({} requests)",
        report.store,
        report.requests.total()
    );
    Ok(())
}

pub(super) async fn compact(ctx: &Ctx, force: bool, partition: Option<u32>) -> Result<()> {
    let db = ctx.join_writer().await?;
    let result = async {
        let outcomes = db.compact(CompactRequest { force, partition }).await?;
        // The index spans every partition: built on a whole-index run only.
        let index = match partition {
            None => Some(db.index(force).await?),
            Some(_) => None,
        };
        Ok::<_, shoal::Error>((outcomes, index))
    }
    .await;
    db.close().await?;
    let (outcomes, index) = result?;
    if ctx.json {
        return ctx.print_json(&serde_json::json!({ "partitions": outcomes, "index": index }));
    }
    let mut n = 0;
    for o in &outcomes {
        match o {
            Outcome::Compacted(r) => {
                n += 1;
                println!(
                    "partition {:>4}: {} segments -> {} ({} index), {} records -> {} ({} dropped), {:.2} MB -> {:.2} MB, {:.2} s (index {:.2} s)",
                    r.partition, r.inputs, r.outputs, r.index, r.records_in, r.records_out, r.dropped,
                    r.bytes_in as f64 / 1e6, r.bytes_out as f64 / 1e6, r.seconds, r.index_seconds
                );
            }
            Outcome::Superseded => println!("a partition was compacted by another compactor first"),
            Outcome::NotNeeded => {}
        }
    }
    println!(
        "compacted {n} partition(s){}",
        if force {
            ""
        } else {
            " (by policy; --force compacts all)"
        }
    );
    if let Some(r) = index {
        print_index_round(&r);
    }
    Ok(())
}

fn print_index_round(r: &shoal::api::IndexRound) {
    if let Some(holder) = &r.lease_held_by {
        println!("index: another indexer ({holder}) is at work; nothing done");
        return;
    }
    if r.superseded {
        println!("index: another indexer committed first; its shards stand");
    }
    match r.generation {
        None => println!(
            "index: nothing to do ({} records in the tails; --force indexes them now)",
            r.tail_records
        ),
        Some(g) => println!(
            "index: generation {g}: {} records from {} partition(s) into {} new shard(s) \
             ({} rows), {} older rows superseded, {} merge(s)",
            r.records_in,
            r.advanced.len(),
            r.shards_written.len(),
            r.rows_out,
            r.rows_killed,
            r.merged.len()
        ),
    }
}

pub(super) async fn gc(
    ctx: &Ctx,
    dry_run: bool,
    grace_seconds: Option<u64>,
    unsafe_grace: bool,
) -> Result<()> {
    let db = ctx.observe().await?;
    let opts = GcOptions {
        grace: grace_seconds.map(Duration::from_secs),
        dry_run,
        allow_unsafe_grace: unsafe_grace,
    };
    let report = db.gc(&opts).await?;
    if ctx.json {
        ctx.print_json(&report)?;
    } else {
        print_gc(&report, dry_run);
    }
    if !report.missing_manifests.is_empty() {
        bail!(
            "gc found {} missing partition manifest(s); nothing under those partitions was \
             deleted: rebuild them with `shoal repair PARTITION`",
            report.missing_manifests.len()
        );
    }
    Ok(())
}

fn print_gc(report: &shoal::api::GcReport, dry_run: bool) {
    let verb = if dry_run { "would delete" } else { "deleted" };
    for k in &report.deleted {
        println!("{verb} {k}");
    }
    for i in &report.stale_instances {
        println!(
            "{} stale instance record {i}",
            if dry_run { "would remove" } else { "removed" }
        );
    }
    println!(
        "{verb} {} object(s); kept {} unreferenced object(s) younger than {} s",
        report.deleted.len(),
        report.kept_young,
        report.grace_seconds
    );
    for key in &report.missing_manifests {
        println!("PROBLEM  {key} is missing: nothing under its partition was deleted");
    }
}
