//! `shoal bench --cost`: what shoal's requests cost at S3 Standard list
//! prices, next to what Amazon S3 Vectors charges for the same work
//! (issue 30, item 5). Writes base vectors in 500-record batches through
//! one writer, compacts and indexes them, then queries from one reader at a
//! steady rate under each consistency level, counting every request the
//! store saw by kind. Prices and their sources: docs/benchmarks.md.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::coord::{RequestedSettings, Role};
use crate::db::{CompactRequest, Db, OpenOptions};
use crate::error::Error;
use crate::reader::{Consistency, SearchRequest};
use crate::record::Record;
use crate::vocab::Metric;

/// S3 Standard, us-east-1: PUT, COPY, POST, LIST per request ($0.005 per 1,000).
const S3_PUT_LIST_USD: f64 = 0.005 / 1000.0;
/// S3 Standard, us-east-1: GET, HEAD and other requests ($0.0004 per 1,000).
const S3_GET_USD: f64 = 0.0004 / 1000.0;
/// Amazon S3 Vectors: data written by PutVectors, per logical GB.
const S3V_PUT_USD_PER_GB: f64 = 0.20;
/// Amazon S3 Vectors: QueryVectors API calls, per call ($2.50 per million).
const S3V_QUERY_USD: f64 = 2.50 / 1e6;
/// Amazon S3 Vectors: query data processed, per logical TB of the index
/// (the first tier's price).
const S3V_PROCESSED_USD_PER_TB: f64 = 0.004;

/// What to run.
#[derive(Clone, Debug)]
pub struct CostOptions {
    pub base: PathBuf,
    pub queries: PathBuf,
    /// Partitions of the new index (`None`: the default).
    pub partitions: Option<u32>,
    pub metric: Metric,
    /// Records per write call.
    pub batch: usize,
    /// Queries per second from the one reader.
    pub qps: f64,
    /// How long each consistency level is measured.
    pub seconds: u64,
}

/// Requests by kind, scaled to a unit of work (1M vectors, 1M queries).
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Requests {
    pub get: f64,
    pub put: f64,
    pub list: f64,
    pub head: f64,
    pub delete: f64,
}

impl Requests {
    /// GET, PUT, LIST, HEAD and DELETE counts times `factor`.
    fn scaled([get, put, list, head, delete]: [u64; 5], factor: f64) -> Self {
        Requests {
            get: get as f64 * factor,
            put: put as f64 * factor,
            list: list as f64 * factor,
            head: head as f64 * factor,
            delete: delete as f64 * factor,
        }
    }

    /// At S3 Standard list prices (DELETE is free).
    pub fn usd(&self) -> f64 {
        (self.put + self.list) * S3_PUT_LIST_USD + (self.get + self.head) * S3_GET_USD
    }
}

/// One consistency level's query cost.
#[derive(Clone, Debug, Serialize)]
pub struct QueryCost {
    pub consistency: String,
    pub queries: u64,
    /// Requests per 1M queries.
    pub per_million: Requests,
    pub usd_per_million: f64,
}

/// Everything `--cost` measured.
#[derive(Clone, Debug, Serialize)]
pub struct CostReport {
    pub store: String,
    pub records: usize,
    pub dimensions: u32,
    pub partitions: u32,
    pub batch: usize,
    /// Requests per 1M vectors written: the write calls, then compaction
    /// and indexing of what they wrote.
    pub write_per_million: Requests,
    pub compact_index_per_million: Requests,
    pub write_usd_per_million: f64,
    /// S3 Vectors' charge for uploading the same 1M vectors (logical
    /// bytes: 4 per dimension plus the key).
    pub s3v_write_usd_per_million: f64,
    pub qps: f64,
    pub queries: Vec<QueryCost>,
    /// S3 Vectors' charge for 1M queries on an index of 1M such vectors
    /// (API calls plus data processed).
    pub s3v_query_usd_per_million: f64,
}

/// Runs the cost measurement against the empty bucket at `url`.
pub async fn run_cost(url: &str, o: &CostOptions) -> Result<CostReport, Error> {
    let invalid = |m: String| Err(Error::InvalidInput(m));
    let base = crate::dataset::read_fvecs(&o.base)?;
    let queries = crate::dataset::read_fvecs(&o.queries)?;
    if base.is_empty() || queries.is_empty() {
        return invalid("--cost needs base and query vectors".into());
    }
    if o.batch == 0 || o.qps <= 0.0 || o.seconds == 0 {
        return invalid("--cost needs a batch, a rate and a duration above zero".into());
    }
    let (store, existing) = Db::peek(url).await?;
    if existing.is_some() {
        return invalid(format!(
            "{store} already holds an index; --cost needs an empty bucket or prefix"
        ));
    }
    let dims = base[0].len() as u32;
    let opts = OpenOptions {
        cluster: crate::coord::JoinOptions {
            settings: RequestedSettings {
                partition_count: o.partitions,
                dimensions: Some(dims),
                distance_metric: Some(o.metric),
                ..Default::default()
            },
            role: Some(Role::Writer),
            ..Default::default()
        },
        ..Default::default()
    };
    let db = Db::open(url, opts).await?;
    let partitions = db.settings().partition_count;
    let before = db.store_counts();
    for (n, chunk) in base.chunks(o.batch).enumerate() {
        let records: Vec<Record> = chunk
            .iter()
            .enumerate()
            .map(|(i, v)| Record::new((n * o.batch + i).to_string(), v.clone()))
            .collect();
        db.upsert(&records).await?;
    }
    let w = db.store_counts().since(&before);
    let written = [w.get, w.put, w.list, w.head, w.delete];
    let before = db.store_counts();
    db.compact(CompactRequest::default()).await?;
    db.index(true).await?;
    let m = db.store_counts().since(&before);
    let maintained = [m.get, m.put, m.list, m.head, m.delete];
    let per_vector = 1e6 / base.len() as f64;
    let write = Requests::scaled(written, per_vector);
    let maintenance = Requests::scaled(maintained, per_vector);
    // S3 Vectors bills logical bytes: 4 per dimension plus the key.
    let logical = |n: usize| 4.0 * dims as f64 + n.to_string().len() as f64;
    let avg_logical = (0..1_000_000).step_by(997).map(logical).sum::<f64>()
        / (0..1_000_000).step_by(997).count() as f64;
    let s3v_write = 1e6 * avg_logical / 1e9 * S3V_PUT_USD_PER_GB;
    let store_name = db.describe();
    db.close().await?;
    // Queries from a process that only reads: no heartbeats or writer
    // loops in its counts.
    let observer = Db::open(url, OpenOptions::observer()).await?;
    let mut levels = Vec::new();
    for (name, c) in [
        ("strong", Consistency::Strong),
        ("bounded", Consistency::Bounded),
        ("eventual", Consistency::Eventual),
    ] {
        levels.push(query_level(&observer, &queries, name, c, o).await?);
    }
    let s3v_query = S3V_QUERY_USD + 1e6 * avg_logical / 1e12 * S3V_PROCESSED_USD_PER_TB;
    let report = CostReport {
        store: store_name,
        records: base.len(),
        dimensions: dims,
        partitions,
        batch: o.batch,
        write_usd_per_million: write.usd() + maintenance.usd(),
        write_per_million: write,
        compact_index_per_million: maintenance,
        s3v_write_usd_per_million: s3v_write,
        qps: o.qps,
        queries: levels,
        s3v_query_usd_per_million: s3v_query * 1e6,
    };
    Ok(report)
}

/// Queries at `o.qps` for `o.seconds` on a reader of its own (warmed by
/// one pass over the query set first, not counted), counting every request
/// the observer's store saw meanwhile, background checks included.
async fn query_level(
    db: &Db,
    queries: &[Vec<f32>],
    name: &str,
    consistency: Consistency,
    o: &CostOptions,
) -> Result<QueryCost, Error> {
    let reader = db.reading_copy(crate::reader::ReaderOptions::for_role(Role::Reader), None);
    reader.warm_up().await?;
    // One pass over the query set first: what is measured is a reader in
    // its steady state (what the queries need is cached), paying only for
    // freshness and for what changed.
    for q in queries {
        let req = SearchRequest {
            consistency: Consistency::Eventual,
            ..SearchRequest::new(q.clone(), 10)
        };
        reader.search(&req).await?;
    }
    let before = reader.store_counts();
    let start = Instant::now();
    let every = Duration::from_secs_f64(1.0 / o.qps);
    let mut sent = 0u64;
    while start.elapsed() < Duration::from_secs(o.seconds) {
        let q = &queries[sent as usize % queries.len()];
        let req = SearchRequest {
            consistency,
            ..SearchRequest::new(q.clone(), 10)
        };
        reader.search(&req).await?;
        sent += 1;
        let next = every * sent as u32;
        if let Some(wait) = next.checked_sub(start.elapsed()) {
            tokio::time::sleep(wait).await;
        }
    }
    let used = reader.store_counts().since(&before);
    let counts = [used.get, used.put, used.list, used.head, used.delete];
    let per_million = Requests::scaled(counts, 1e6 / sent.max(1) as f64);
    Ok(QueryCost {
        consistency: name.to_string(),
        queries: sent,
        usd_per_million: per_million.usd(),
        per_million,
    })
}
