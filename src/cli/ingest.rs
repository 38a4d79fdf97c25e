//! `shoal ingest FILE...`: streams JSONL, `.npy` (float32, 2-D) and
//! `.fvecs` files into the index through a batch writer, in constant
//! memory, with a progress bar and a summary.
//!
//! A bad record stops the ingest (unless `--skip-invalid`): everything
//! read before it is flushed and acknowledged, nothing after it is, and
//! the summary says exactly how many records were committed.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use serde::{Deserialize, Serialize};
use shoal::record::{prepare_one, InvalidInput, Record};
use shoal::store::ObjectStore;
use shoal::writer::{BatchWriter, BatchWriterOptions, WriterOptions};

use super::Ctx;

#[derive(Args)]
pub struct IngestArgs {
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonRecord {
    id: String,
    vector: Vec<f32>,
    #[serde(default)]
    metadata: Option<serde_json::Value>,
    #[serde(default)]
    domain: Option<String>,
}

/// One record read from a file, or what is wrong with it, and where.
type Item = (String, Result<Record, String>);

/// Streams records out of one file.
fn open_reader(
    path: &Path,
    ids: Option<&Path>,
    meta: Option<&Path>,
) -> Result<Box<dyn Iterator<Item = Item>>> {
    let name = path.display().to_string();
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let file = File::open(path).with_context(|| format!("cannot open {name}"))?;
    match ext.as_str() {
        "jsonl" | "ndjson" | "json" => {
            let lines = BufReader::with_capacity(1 << 20, file).lines();
            Ok(Box::new(lines.enumerate().filter_map(move |(i, line)| {
                let loc = format!("{name}:{}", i + 1);
                match line {
                    Err(e) => Some((loc, Err(format!("cannot read line: {e}")))),
                    Ok(l) if l.trim().is_empty() => None,
                    Ok(l) => Some((
                        loc,
                        serde_json::from_str::<JsonRecord>(&l)
                            .map(|r| Record {
                                id: r.id,
                                vector: r.vector,
                                metadata: r.metadata,
                                domain: r.domain,
                            })
                            .map_err(|e| format!("bad JSON record: {e}")),
                    )),
                }
            })))
        }
        "fvecs" => {
            let rows = shoal::dataset::FvecsReader::open(path)?;
            let rows = rows.map(|r| r.map_err(|e| e.to_string()));
            Ok(with_ids_and_metadata(name, rows, ids, meta)?)
        }
        "npy" => {
            let rows = NpyRows::open(file, &name)?;
            Ok(with_ids_and_metadata(name, rows, ids, meta)?)
        }
        other => bail!(
            "{name}: unsupported file type `.{other}`; use .jsonl, .ndjson, .json, .npy or .fvecs"
        ),
    }
}

/// Pairs vector rows with optional id and metadata files, line by line.
fn with_ids_and_metadata(
    name: String,
    rows: impl Iterator<Item = Result<Vec<f32>, String>> + 'static,
    ids: Option<&Path>,
    meta: Option<&Path>,
) -> Result<Box<dyn Iterator<Item = Item>>> {
    let open_lines = |p: &Path| -> Result<std::io::Lines<BufReader<File>>> {
        Ok(
            BufReader::new(File::open(p).with_context(|| format!("cannot open {}", p.display()))?)
                .lines(),
        )
    };
    let mut ids = ids.map(open_lines).transpose()?;
    let mut metas = meta.map(open_lines).transpose()?;
    let (ids_name, meta_name) = (
        ids.as_ref().map(|_| "ids file").unwrap_or(""),
        metas.as_ref().map(|_| "metadata file").unwrap_or(""),
    );
    Ok(Box::new(rows.enumerate().map(move |(i, row)| {
        let loc = format!("{name}:row {i}");
        let record = (|| {
            let vector = row?;
            let id = match ids.as_mut() {
                None => i.to_string(),
                Some(lines) => {
                    let line = lines
                        .next()
                        .ok_or_else(|| format!("the {ids_name} has fewer lines than rows"))?
                        .map_err(|e| e.to_string())?;
                    serde_json::from_str::<String>(&line)
                        .unwrap_or_else(|_| line.trim().to_string())
                }
            };
            let metadata = match metas.as_mut() {
                None => None,
                Some(lines) => {
                    let line = lines
                        .next()
                        .ok_or_else(|| format!("the {meta_name} has fewer lines than rows"))?
                        .map_err(|e| e.to_string())?;
                    Some(
                        serde_json::from_str(&line)
                            .map_err(|e| format!("bad metadata JSON: {e}"))?,
                    )
                }
            };
            Ok(Record {
                id,
                vector,
                metadata,
                domain: None,
            })
        })();
        (loc, record)
    })))
}

/// Streams rows of a little-endian float32 2-D C-order `.npy` file.
pub(super) struct NpyRows {
    reader: BufReader<File>,
    rows: usize,
    cols: usize,
    at: usize,
}

impl NpyRows {
    pub(super) fn open(file: File, name: &str) -> Result<Self> {
        let mut reader = BufReader::with_capacity(1 << 20, file);
        let mut magic = [0u8; 8];
        reader
            .read_exact(&mut magic)
            .map_err(|_| anyhow!("{name}: not a .npy file (too short)"))?;
        if &magic[..6] != b"\x93NUMPY" {
            bail!("{name}: not a .npy file (bad magic)");
        }
        let header_len = if magic[6] == 1 {
            let mut b = [0u8; 2];
            reader.read_exact(&mut b)?;
            u16::from_le_bytes(b) as usize
        } else {
            let mut b = [0u8; 4];
            reader.read_exact(&mut b)?;
            u32::from_le_bytes(b) as usize
        };
        if header_len > 1 << 20 {
            bail!("{name}: .npy header of {header_len} bytes is implausible");
        }
        let mut header = vec![0u8; header_len];
        reader.read_exact(&mut header)?;
        let header = String::from_utf8_lossy(&header);
        if !header.contains("'descr': '<f4'") {
            bail!(
                "{name}: .npy must hold little-endian float32 ('<f4'); header is {}",
                header.trim()
            );
        }
        if header.contains("'fortran_order': True") {
            bail!("{name}: .npy in Fortran order is not supported; save it with C order");
        }
        let shape = header
            .split("'shape': (")
            .nth(1)
            .and_then(|s| s.split(')').next())
            .ok_or_else(|| anyhow!("{name}: .npy header has no shape"))?;
        let dims: Vec<usize> = shape
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| s.parse())
            .collect::<Result<_, _>>()
            .map_err(|_| anyhow!("{name}: bad .npy shape ({shape})"))?;
        let [rows, cols] = dims[..] else {
            bail!("{name}: .npy must be 2-D (rows x dimensions), shape is ({shape})");
        };
        Ok(NpyRows {
            reader,
            rows,
            cols,
            at: 0,
        })
    }
}

impl Iterator for NpyRows {
    type Item = Result<Vec<f32>, String>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.at >= self.rows {
            return None;
        }
        self.at += 1;
        let mut buf = vec![0u8; self.cols * 4];
        Some(
            self.reader
                .read_exact(&mut buf)
                .map(|_| {
                    buf.chunks_exact(4)
                        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                        .collect()
                })
                .map_err(|e| format!("truncated .npy data: {e}")),
        )
    }
}

#[derive(Serialize, Default)]
struct Summary {
    files: usize,
    records_committed: usize,
    records_skipped: usize,
    segments: usize,
    bytes_written: u64,
    requests: shoal::store::RequestCounts,
    seconds: f64,
    records_per_s: f64,
    partitions_compacted: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    stopped_at: Option<String>,
}

pub async fn run(ctx: &Ctx, a: IngestArgs) -> Result<()> {
    for f in &a.files {
        if !f.exists() {
            bail!("{}: no such file", f.display());
        }
    }
    let store = ctx.store().await?;
    ctx.config(&store).await?;
    let cluster = ctx.join_writer(store.clone(), Default::default()).await?;
    let writer = cluster.writer(WriterOptions::default());
    let schema = writer.schema().clone();
    let bw = BatchWriter::new(
        writer.clone(),
        BatchWriterOptions {
            batch_size: a.batch_size.max(1),
            ..Default::default()
        },
    );
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
    let before = store.counts();
    let start = Instant::now();
    let mut summary = Summary {
        files: a.files.len(),
        ..Default::default()
    };
    let mut added = 0usize;
    let mut failure: Option<String> = None;
    'files: for (n, f) in a.files.iter().enumerate() {
        let items = open_reader(f, a.ids.as_deref(), a.metadata.as_deref())?;
        let size = f.metadata().map(|m| m.len()).unwrap_or(0);
        let done_before: u64 = a.files[..n]
            .iter()
            .filter_map(|f| f.metadata().ok())
            .map(|m| m.len())
            .sum();
        let mut batch = Vec::with_capacity(5000);
        for (loc, item) in items {
            let checked = item.and_then(|r| {
                prepare_one(&r, &schema).map_err(|e| match e {
                    InvalidInput::Record { id, reason, .. } => format!("id {id:?}: {reason}"),
                    other => other.to_string(),
                })
            });
            match checked {
                Ok(p) => batch.push(p),
                Err(why) if a.skip_invalid => {
                    summary.records_skipped += 1;
                    bar.suspend(|| eprintln!("skipped {loc}: {why}"));
                }
                Err(why) => {
                    failure = Some(format!("{loc}: {why}"));
                    break;
                }
            }
            if batch.len() == 5000 {
                added += batch.len();
                summary.segments += bw.add_prepared(std::mem::take(&mut batch)).await?.segments;
                let rate = added as f64 / start.elapsed().as_secs_f64().max(1e-9);
                bar.set_message(format!("{added} records, {rate:.0} records/s"));
            }
        }
        added += batch.len();
        summary.segments += bw.add_prepared(batch).await?.segments;
        bar.set_position(done_before + size);
        if failure.is_some() {
            break 'files;
        }
    }
    // Commit everything read before any bad record.
    summary.segments += bw.close().await?.segments;
    bar.finish_and_clear();
    if !a.no_compact {
        for o in shoal::compact::compact_dirty(&writer).await {
            if let shoal::compact::Outcome::Compacted(_) = o {
                summary.partitions_compacted += 1;
            }
        }
    }
    cluster.leave().await?;
    summary.records_committed = added;
    summary.seconds = start.elapsed().as_secs_f64();
    summary.records_per_s = added as f64 / summary.seconds.max(1e-9);
    summary.requests = store.counts().since(&before);
    summary.bytes_written = summary.requests.bytes_written;
    summary.stopped_at = failure.clone();
    if ctx.json {
        ctx.print_json(&summary)?;
    } else {
        let r = &summary.requests;
        let out = format!(
            "committed {} records into {} ({} segments, {:.1} MB) in {:.2} s, {:.0} records/s; skipped {}; compacted {} partition(s); requests: PUT {} GET {} LIST {}",
            summary.records_committed,
            store.describe(),
            summary.segments,
            summary.bytes_written as f64 / 1e6,
            summary.seconds,
            summary.records_per_s,
            summary.records_skipped,
            summary.partitions_compacted,
            r.put,
            r.get,
            r.list
        );
        if failure.is_some() {
            eprintln!("{out}");
        } else {
            println!("{out}");
        }
    }
    if let Some(f) = failure {
        bail!("{f}\nstopped there: the {added} records before it were committed; nothing after it was (use --skip-invalid to skip bad records)");
    }
    Ok(())
}
