//! Bulk ingest of files through a handle: streams JSONL, `.npy` and
//! `.fvecs` files ([`crate::dataset`]) into the index in constant memory,
//! validating record by record.
//!
//! A bad record stops the ingest (unless `skip_invalid`): everything read
//! before it is flushed and acknowledged, nothing after it is, and the
//! summary says exactly how many records were committed and where it
//! stopped. `shoal ingest` is this plus a progress bar.

use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;

use crate::dataset::open_records;
use crate::db::Db;
use crate::error::Error;
use crate::record::{prepare_one, InvalidInput};
use crate::store::RequestCounts;

/// What to ingest, and how.
#[derive(Clone, Debug)]
pub struct IngestOptions {
    pub files: Vec<PathBuf>,
    /// For `.npy`/`.fvecs`: ids, one per line; default: row numbers.
    pub ids: Option<PathBuf>,
    /// For `.npy`/`.fvecs`: metadata, one JSON object per line.
    pub metadata: Option<PathBuf>,
    /// Skip (and count) invalid records instead of stopping at the first.
    pub skip_invalid: bool,
    /// Records per partition per segment.
    pub batch_size: usize,
    /// Compact the partitions written to afterwards (by policy).
    pub compact: bool,
    /// Called as each segment commits, with the ids it made durable (from
    /// the flushing task, so it must be quick and thread-safe): what
    /// `shoal ingest --json` prints as acknowledgements.
    pub on_durable: Option<crate::writer::DurableHook>,
}

/// Progress, as it happens.
pub enum IngestEvent<'a> {
    /// A record was skipped (`skip_invalid`): where, and why.
    Skipped { at: &'a str, why: &'a str },
    /// Records handed to the writer so far, and the rate.
    Records { added: usize, per_second: f64 },
    /// Bytes of input files fully read so far.
    FileDone { bytes: u64 },
}

/// What an ingest did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct IngestSummary {
    pub files: usize,
    pub records_committed: usize,
    pub records_skipped: usize,
    pub segments: usize,
    pub bytes_written: u64,
    pub requests: RequestCounts,
    pub seconds: f64,
    pub records_per_s: f64,
    pub partitions_compacted: usize,
    /// Records the indexer moved into index shards after the ingest (it
    /// runs when the tails hold enough records; see `compact::indexer`).
    pub records_indexed: u64,
    /// The first bad record (`file:line: reason`), when it stopped there.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped_at: Option<String>,
}

const CHUNK: usize = 5000;

/// Ingests `opts.files` into `db`. Returns the summary; when a bad record
/// stopped it, `stopped_at` says where (everything before it is
/// committed). Missing or unreadable files fail before anything is read.
pub async fn ingest_files(
    db: &Db,
    opts: &IngestOptions,
    mut on: impl FnMut(IngestEvent<'_>),
) -> Result<IngestSummary, Error> {
    for f in &opts.files {
        if !f.exists() {
            return Err(Error::InvalidInput(format!(
                "{}: no such file",
                f.display()
            )));
        }
    }
    let schema = db.writer().schema().clone();
    let bw = db.bulk_writer(opts.batch_size, opts.on_durable.clone());
    let before = db.store_counts();
    let start = Instant::now();
    let mut summary = IngestSummary {
        files: opts.files.len(),
        ..Default::default()
    };
    let mut added = 0usize;
    let mut done_bytes = 0u64;
    'files: for f in &opts.files {
        let items = open_records(f, opts.ids.as_deref(), opts.metadata.as_deref())?;
        let mut batch = Vec::with_capacity(CHUNK);
        for (loc, item) in items {
            let checked = item.and_then(|r| {
                prepare_one(&r, &schema).map_err(|e| match e {
                    InvalidInput::Record { id, reason, .. } => format!("id {id:?}: {reason}"),
                    other => other.to_string(),
                })
            });
            match checked {
                Ok(p) => batch.push(p),
                Err(why) if opts.skip_invalid => {
                    summary.records_skipped += 1;
                    on(IngestEvent::Skipped {
                        at: &loc,
                        why: &why,
                    });
                }
                Err(why) => {
                    summary.stopped_at = Some(format!("{loc}: {why}"));
                    break;
                }
            }
            if batch.len() == CHUNK {
                added += batch.len();
                summary.segments += bw.add_prepared(std::mem::take(&mut batch)).await?.segments;
                on(IngestEvent::Records {
                    added,
                    per_second: added as f64 / start.elapsed().as_secs_f64().max(1e-9),
                });
            }
        }
        added += batch.len();
        summary.segments += bw.add_prepared(batch).await?.segments;
        done_bytes += f.metadata().map(|m| m.len()).unwrap_or(0);
        on(IngestEvent::FileDone { bytes: done_bytes });
        if summary.stopped_at.is_some() {
            break 'files;
        }
    }
    // Commit everything read before any bad record.
    summary.segments += bw.close().await?.segments;
    db.count_writes(added);
    if opts.compact {
        summary.partitions_compacted = db
            .compact_dirty()
            .await
            .iter()
            .filter(|o| matches!(o, crate::compact::Outcome::Compacted(_)))
            .count();
        // A large ingest is searchable through the index shards right
        // away; a small one waits in the tails for the next round.
        match db.index(false).await {
            Ok(round) => summary.records_indexed = round.records_in,
            Err(e) => {
                tracing::warn!(error = %e, "indexing after the ingest failed; a later round will")
            }
        }
    }
    summary.records_committed = added;
    summary.seconds = start.elapsed().as_secs_f64();
    summary.records_per_s = added as f64 / summary.seconds.max(1e-9);
    summary.requests = db.store_counts().since(&before);
    summary.bytes_written = summary.requests.bytes_written;
    Ok(summary)
}
