//! `shoal bench` as a library call: ingest a TEXMEX dataset into an empty
//! bucket, compact it with an index, then measure warm queries (one at a
//! time and from concurrent clients) and cold queries (each on a fresh
//! reader with an empty cache). The CLI only prints [`SuiteResults`].

use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;

use super::{concurrent_qps, ingest, run_queries, IngestResult, QueryResult};
use crate::coord::{RequestedSettings, Role};
use crate::db::{CompactRequest, Db, OpenOptions};
use crate::error::Error;
use crate::reader::{Consistency, ReaderOptions, SearchRequest};
use crate::vocab::{IndexSettings, Metric};

/// What to run.
#[derive(Clone, Debug)]
pub struct SuiteOptions {
    /// Base vectors (.fvecs); ids are row numbers.
    pub base: PathBuf,
    /// Query vectors (.fvecs).
    pub queries: PathBuf,
    /// Exact neighbours of each query (.ivecs), for recall.
    pub truth: PathBuf,
    pub partitions: u32,
    pub metric: Metric,
    /// `ivf`, `hnsw` or `none`.
    pub index: String,
    pub index_min_records: u64,
    pub nprobe: usize,
    /// Queries run warm (default: all).
    pub warm_queries: Option<usize>,
    pub cold_queries: usize,
    pub clients: usize,
    /// Build index shards after compaction (the default layout); off
    /// measures per-partition indexes only.
    pub shards: bool,
    /// Latency added before every store request of the query phases.
    pub store_latency_ms: u64,
    /// Query an index already in the bucket (built by an earlier run):
    /// no ingest, compaction or indexing.
    pub skip_ingest: bool,
    /// The reader's cache budget in bytes (default: the reader's own).
    pub cache_bytes: Option<u64>,
    /// Filtered queries: per base row its metadata (JSONL, one object per
    /// line in row order, `id` equal to the row number when present),
    /// per query the value its filter asks for (JSONL in query order),
    /// the field filtered on, and exact truth among the matching rows
    /// (.ivecs, -1 padded).
    pub filtered: Option<FilteredOptions>,
}

/// Where the filtered-query phase's inputs are.
#[derive(Clone, Debug)]
pub struct FilteredOptions {
    /// Base metadata (used at ingest; `--skip-ingest` runs ignore it).
    pub metadata: Option<PathBuf>,
    pub query_metadata: PathBuf,
    pub truth: PathBuf,
    pub field: String,
}

/// Everything measured, with the settings that produced it.
#[derive(Clone, Debug, Serialize)]
pub struct SuiteResults {
    pub ingest: IngestResult,
    pub compact_seconds: f64,
    /// The indexer's round over everything compacted (`None` without shards).
    pub index: Option<IndexPhase>,
    pub warm: QueryResult,
    /// Warm queries with a metadata filter (`filtered` set).
    pub warm_filtered: Option<QueryResult>,
    pub warm_qps_concurrent: f64,
    pub cold: QueryResult,
    pub store: String,
    pub records: usize,
    pub dimensions: u32,
    /// Bytes of every shard and tail segment a query may read.
    pub index_bytes: u64,
    /// Peak resident memory of this process, reported only with
    /// `skip_ingest` (a process that did nothing but read).
    pub reader_peak_rss_bytes: Option<u64>,
    /// What the warm reader holds of the index outside its cache: shard
    /// heads, routings, deletion vectors and any id map.
    pub reader_index_bytes: u64,
    /// What the warm reader's warm-up cached: code lists, and metadata
    /// and row parts (as far as the cache's budget held them).
    pub warm_code_lists: u64,
    pub warm_row_parts: u64,
    pub threads: usize,
    pub machine: String,
}

/// One line about this machine: CPU model, cores, memory.
/// What building the index shards took.
#[derive(Clone, Debug, serde::Serialize)]
pub struct IndexPhase {
    pub seconds: f64,
    pub records_per_s: f64,
    pub shards: usize,
    /// The indexer's peak resident memory: the process's peak during the
    /// round less what it held when the round began (the bench's base
    /// vectors and writer), where Linux lets the peak be reset.
    pub indexer_peak_rss_bytes: Option<u64>,
}

pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown cpu".into());
    let mem = crate::reader::memory_budget_bytes() * 2 / (1 << 30);
    format!(
        "{cpu}, {} cores, ~{mem} GiB",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    )
}

/// Runs the suite against the empty bucket at `url`.
pub async fn run_suite(url: &str, o: &SuiteOptions) -> Result<SuiteResults, Error> {
    let invalid = |m: String| Err(Error::InvalidInput(m));
    let queries = crate::dataset::read_fvecs(&o.queries)?;
    let truth = crate::dataset::read_ivecs(&o.truth)?;
    if queries.is_empty() {
        return invalid("the query file must hold vectors".into());
    }
    if truth.len() < queries.len() {
        return invalid(format!(
            "{} has {} rows for {} queries",
            o.truth.display(),
            truth.len(),
            queries.len()
        ));
    }
    if !["ivf", "hnsw", "none"].contains(&o.index.as_str()) {
        return invalid(format!(
            "--index must be ivf, hnsw or none, not {:?}",
            o.index
        ));
    }
    let (store, existing) = Db::peek(url).await?;
    match (&existing, o.skip_ingest) {
        (Some(_), false) => {
            return invalid(format!(
                "{} already holds an index; bench needs an empty bucket or prefix \
                 (or --skip-ingest to query the index there)",
                store
            ))
        }
        (None, true) => {
            return invalid(format!(
                "--skip-ingest queries an existing index, and {} holds none; run bench \
                 without it first",
                store
            ))
        }
        _ => {}
    }
    if let (Some(_), true) = (existing, o.skip_ingest) {
        // A process that only reads: the base vectors stay on disk, so
        // its peak resident memory is the reader's.
        return query_phases(o, url, &queries, &truth, None, None, 0.0, None).await;
    }
    let base = crate::dataset::read_fvecs(&o.base)?;
    if base.is_empty() {
        return invalid("the base file must hold vectors".into());
    }
    let metadata = match o.filtered.as_ref().and_then(|f| f.metadata.as_ref()) {
        Some(path) => Some(read_metadata(path, base.len())?),
        None => None,
    };
    let dims = base[0].len() as u32;
    let opts = OpenOptions {
        cluster: crate::coord::JoinOptions {
            settings: RequestedSettings {
                partition_count: Some(o.partitions),
                dimensions: Some(dims),
                distance_metric: Some(o.metric),
                ..Default::default()
            },
            role: Some(Role::Writer),
            ..Default::default()
        },
        ..Default::default()
    };
    let created = Db::open(url, opts.clone()).await?;
    let ix = IndexSettings {
        kind: o
            .index
            .parse()
            .map_err(|e| Error::InvalidInput(format!("--index: {e}")))?,
        min_records: o.index_min_records,
        nprobe: o.nprobe as u32,
        ..Default::default()
    };
    created.set_index_settings(ix).await?;
    created.close().await?;
    // Reopen so the writer and reader see the index settings.
    let db = Db::open(url, opts).await?;
    let (ingest, compact_seconds, index) = write_phases(&db, o, &base, metadata.as_deref()).await?;
    db.close().await?;
    query_phases(
        o,
        url,
        &queries,
        &truth,
        Some(base.len()),
        Some(ingest),
        compact_seconds,
        index,
    )
    .await
}

/// The writing phases: ingest `base` (with its metadata), compact every
/// partition and, with `shards`, build the index shards.
async fn write_phases(
    db: &Db,
    o: &SuiteOptions,
    base: &[Vec<f32>],
    metadata: Option<&[serde_json::Value]>,
) -> Result<(IngestResult, f64, Option<IndexPhase>), Error> {
    let dims = base[0].len() as u32;
    tracing::info!(records = base.len(), dims, store = %db.describe(), "bench: ingest");
    let ingest = ingest(db, base, metadata, 1000).await?;
    tracing::info!(index = %o.index, "bench: compact");
    let t = Instant::now();
    db.compact(CompactRequest {
        force: true,
        partition: None,
    })
    .await?;
    let compact_seconds = t.elapsed().as_secs_f64();
    let index = if o.shards {
        tracing::info!("bench: index shards");
        let held = reset_peak_rss().then(rss_bytes).flatten();
        let t = Instant::now();
        let round = db.index(true).await?;
        let seconds = t.elapsed().as_secs_f64();
        Some(IndexPhase {
            seconds,
            records_per_s: round.records_in as f64 / seconds.max(1e-9),
            shards: round.shards_written.len(),
            indexer_peak_rss_bytes: held
                .zip(peak_rss_bytes())
                .map(|(held, peak)| peak.saturating_sub(held)),
        })
    } else {
        None
    };
    Ok((ingest, compact_seconds, index))
}

/// The query phases: warm (one client, then concurrent clients) and cold
/// (a fresh reader per query), on reading copies of a handle that only
/// observes the index at `url`.
#[allow(clippy::too_many_arguments)]
async fn query_phases(
    o: &SuiteOptions,
    url: &str,
    queries: &[Vec<f32>],
    truth: &[Vec<i32>],
    records: Option<usize>,
    ingest: Option<IngestResult>,
    compact_seconds: f64,
    index: Option<IndexPhase>,
) -> Result<SuiteResults, Error> {
    let observer = Db::open(url, OpenOptions::observer()).await?;
    let dims = observer.settings().dimensions;
    // Queries pay the simulated first-byte latency; ingest does not.
    let latency = std::time::Duration::from_millis(o.store_latency_ms);
    let warm_n = o.warm_queries.unwrap_or(queries.len()).min(queries.len());
    let mut reader_opts = ReaderOptions::for_role(Role::Reader);
    if let Some(b) = o.cache_bytes {
        reader_opts.cache_bytes = b;
    }
    let fresh_reader = || observer.reading_copy(reader_opts.clone(), Some(latency));
    let reader = fresh_reader();
    let warmed = reader.warm_up().await?;
    let index_bytes = observer.searchable_bytes().await?;
    let template = SearchRequest {
        consistency: Consistency::Bounded,
        nprobe: Some(o.nprobe),
        // A cold query on a large index loads all of it (whole shards,
        // for now): measure it, however long it takes.
        deadline_ms: Some(600_000),
        ..SearchRequest::new(vec![], 10)
    };
    tracing::info!(warm_n, clients = o.clients, "bench: warm queries");
    let warm = run_queries(
        || reader.clone(),
        &queries[..warm_n],
        truth,
        None,
        None,
        &template,
    )
    .await?;
    let warm_filtered = match &o.filtered {
        Some(f) => {
            let (filters, ftruth) = filtered_inputs(f, queries.len())?;
            tracing::info!(warm_n, field = %f.field, "bench: filtered warm queries");
            Some(
                run_queries(
                    || reader.clone(),
                    &queries[..warm_n],
                    &ftruth,
                    None,
                    Some(&filters),
                    &template,
                )
                .await?,
            )
        }
        None => None,
    };
    let warm_qps_concurrent =
        concurrent_qps(&reader, &queries[..warm_n], &template, o.clients).await?;
    let reader_index_bytes = reader.reader_stats().pinned_bytes;
    // Cold queries run on readers of their own: the warm one goes first,
    // so the process holds one reader at a time.
    drop(reader);
    let cold_n = o.cold_queries.min(queries.len());
    tracing::info!(cold_n, "bench: cold queries, each on a fresh reader");
    let cold = run_queries(
        fresh_reader,
        &queries[..cold_n],
        truth,
        None,
        None,
        &template,
    )
    .await?;
    Ok(SuiteResults {
        ingest: ingest.unwrap_or_default(),
        compact_seconds,
        index,
        warm,
        warm_filtered,
        warm_qps_concurrent,
        cold,
        store: observer.describe(),
        records: records.unwrap_or(warmed.live_records as usize),
        dimensions: dims,
        index_bytes,
        reader_peak_rss_bytes: o.skip_ingest.then(peak_rss_bytes).flatten(),
        reader_index_bytes,
        warm_code_lists: warmed.code_lists,
        warm_row_parts: warmed.row_chunks,
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        machine: machine(),
    })
}

/// Reads JSONL metadata, one object per line: every field but `id` and
/// `text` (ids must equal the line number when present: rows are matched
/// by position).
fn read_metadata(path: &std::path::Path, rows: usize) -> Result<Vec<serde_json::Value>, Error> {
    let bad = |m: String| Error::InvalidInput(format!("{}: {m}", path.display()));
    if path.extension().is_some_and(|e| e == "gz") {
        return Err(bad(
            "compressed; decompress it first (gunzip -c FILE.gz > FILE)".into(),
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let mut out = Vec::with_capacity(rows);
    for (n, line) in text.lines().filter(|l| !l.trim().is_empty()).enumerate() {
        let mut v: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(line).map_err(|e| bad(format!("line {}: {e}", n + 1)))?;
        if let Some(id) = v.remove("id") {
            if id.as_u64() != Some(n as u64) {
                return Err(bad(format!(
                    "line {}: id {id} is not the row number {n}",
                    n + 1
                )));
            }
        }
        v.remove("text");
        out.push(serde_json::Value::Object(v));
    }
    if out.len() != rows {
        return Err(bad(format!("{} lines for {rows} base vectors", out.len())));
    }
    Ok(out)
}

/// Each query's filter (`{field: its value}`) and the filtered truth.
fn filtered_inputs(
    f: &FilteredOptions,
    queries: usize,
) -> Result<(Vec<serde_json::Value>, Vec<Vec<i32>>), Error> {
    let path = &f.query_metadata;
    let bad = |m: String| Error::InvalidInput(format!("{}: {m}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let filters = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(n, line)| {
            let v: serde_json::Value =
                serde_json::from_str(line).map_err(|e| bad(format!("line {}: {e}", n + 1)))?;
            let want = v
                .get(&f.field)
                .ok_or_else(|| bad(format!("line {} has no {:?} field", n + 1, f.field)))?;
            Ok(serde_json::json!({ f.field.clone(): want.clone() }))
        })
        .collect::<Result<Vec<_>, Error>>()?;
    let truth = crate::dataset::read_ivecs(&f.truth)?;
    if filters.len() < queries || truth.len() < queries {
        return Err(Error::InvalidInput(format!(
            "{} queries, but {} query metadata lines and {} filtered truth rows",
            queries,
            filters.len(),
            truth.len()
        )));
    }
    Ok((filters, truth))
}

/// This process's peak resident memory (`VmHWM`), where Linux reports it.
fn peak_rss_bytes() -> Option<u64> {
    proc_status_bytes("VmHWM:")
}

/// This process's resident memory now (`VmRSS`).
fn rss_bytes() -> Option<u64> {
    proc_status_bytes("VmRSS:")
}

fn proc_status_bytes(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Resets the peak resident memory to the current one (Linux 4.0 and
/// later: `5` written to `/proc/self/clear_refs`); whether it could.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}
