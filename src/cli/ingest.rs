//! `shoal ingest FILE...`: the library's file ingest (`shoal::ingest`:
//! JSONL, `.npy`, `.fvecs`, streamed, validated record by record) with a
//! progress bar and a summary.
//!
//! A bad record stops the ingest (unless `--skip-invalid`): everything
//! read before it is flushed and acknowledged, nothing after it is, and
//! the summary says exactly how many records were committed.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use std::sync::Arc;

use shoal::api::{ingest_files, Durable, DurableHook, IngestEvent, IngestOptions};

use super::Ctx;

#[derive(Args)]
pub(crate) struct IngestArgs {
    /// Files to ingest: .jsonl/.ndjson/.json ({"id","vector","metadata"} per line),
    /// .npy (float32, 2-D), .fvecs (TEXMEX).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// For .npy/.fvecs: ids, one per line (plain text or a JSON string); default: row numbers.
    #[arg(long)]
    pub ids: Option<PathBuf>,
    /// For .npy/.fvecs: metadata, one JSON object per line.
    #[arg(long)]
    pub metadata: Option<PathBuf>,
    /// Skip (and count) invalid records instead of stopping at the first one.
    #[arg(long)]
    pub skip_invalid: bool,
    /// Records per partition per segment.
    #[arg(long, default_value_t = 1000)]
    pub batch_size: usize,
    /// Do not compact the partitions written to afterwards (by policy).
    #[arg(long)]
    pub no_compact: bool,
}

pub(super) async fn run(ctx: &Ctx, a: IngestArgs) -> Result<()> {
    for f in &a.files {
        if !f.exists() {
            bail!("{}: no such file", f.display());
        }
    }
    let db = ctx.join_writer().await?;
    let total_bytes: u64 = a
        .files
        .iter()
        .filter_map(|f| f.metadata().ok())
        .map(|m| m.len())
        .sum();
    // Advances per file; the message carries records and rate. Drawn only
    // on a terminal (stderr), so scripts and --json see nothing of it.
    let bar = indicatif::ProgressBar::new(total_bytes);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {bar:30} {msg} [{elapsed_precise}]")
            .expect("valid template"),
    );
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    let opts = IngestOptions {
        files: a.files.clone(),
        ids: a.ids.clone(),
        metadata: a.metadata.clone(),
        skip_invalid: a.skip_invalid,
        batch_size: a.batch_size.max(1),
        compact: !a.no_compact,
        // With --json, one line per commit as it lands: these records are
        // durable (acknowledged); anything not named on such a line is not.
        on_durable: ctx.json.then(|| {
            DurableHook(Arc::new(|d: Durable<'_>| {
                let line = serde_json::json!({ "durable": d });
                println!("{line}");
            }))
        }),
    };
    let result = ingest_files(&db, &opts, |event| match event {
        IngestEvent::Skipped { at, why } => bar.suspend(|| eprintln!("skipped {at}: {why}")),
        IngestEvent::Records { added, per_second } => {
            bar.set_message(format!("{added} records, {per_second:.0} records/s"))
        }
        IngestEvent::FileDone { bytes } => bar.set_position(bytes),
    })
    .await;
    bar.finish_and_clear();
    db.close().await?;
    let summary = result?;
    let added = summary.records_committed;
    if ctx.json {
        // The last line: the summary (the lines before it are the commits).
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        let r = &summary.requests;
        let out = format!(
            "committed {} records into {} ({} segments, {:.1} MB) in {:.2} s, {:.0} records/s; skipped {}; compacted {} partition(s), indexed {} record(s); requests: PUT {} GET {} LIST {}",
            summary.records_committed,
            db.describe(),
            summary.segments,
            summary.bytes_written as f64 / 1e6,
            summary.seconds,
            summary.records_per_s,
            summary.records_skipped,
            summary.partitions_compacted,
            summary.records_indexed,
            r.put,
            r.get,
            r.list
        );
        if summary.stopped_at.is_some() {
            eprintln!("{out}");
        } else {
            println!("{out}");
        }
    }
    if let Some(f) = summary.stopped_at {
        bail!("{f}\nstopped there: the {added} records before it were committed; nothing after it was (use --skip-invalid to skip bad records)");
    }
    Ok(())
}
