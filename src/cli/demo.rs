//! `shoal demo`: the whole engine on a small real dataset shipped inside
//! the binary (3,000 Debian package descriptions embedded with
//! all-MiniLM-L6-v2, 384-d, and 12 real queries; see
//! scripts/make-demo-data.py). Needs no server: by default it builds a
//! local-directory index in ./shoal-demo.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use serde::Deserialize;
use serde_json::json;
use shoal::api::{
    exact_top_k, parse_filter_expr, percentile, Consistency, JoinOptions, Metric, QueryText,
    Record, RequestedSettings, Role, SearchRequest, TextField,
};
use shoal::{Db, OpenOptions};

use super::query::print_hits;
use super::Ctx;

const VECTORS: &[u8] = include_bytes!("../../data/demo/vectors.f32.zst");
const DOCS: &[u8] = include_bytes!("../../data/demo/docs.jsonl.zst");
const QUERIES: &str = include_str!("../../data/demo/queries.json");
const DIMS: usize = 384;
pub(super) const DEMO_BUCKET: &str = "./shoal-demo";

#[derive(Args)]
pub(crate) struct DemoArgs {
    /// Hash partitions of the demo index.
    #[arg(long, default_value_t = 8)]
    pub partitions: u32,
}

#[derive(Deserialize)]
struct Doc {
    id: String,
    package: String,
    domain: String,
    text: String,
}

#[derive(Deserialize)]
struct Query {
    text: String,
    domain: String,
    vector: Vec<f32>,
}

fn load() -> Result<(Vec<Record>, Vec<Query>)> {
    let raw = zstd::decode_all(VECTORS).context("demo vectors")?;
    let docs = String::from_utf8(zstd::decode_all(DOCS).context("demo docs")?)?;
    let docs: Vec<Doc> = docs
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let vectors: Vec<f32> = raw
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    anyhow::ensure!(
        vectors.len() == docs.len() * DIMS,
        "demo data is inconsistent"
    );
    let records = docs
        .into_iter()
        .zip(vectors.chunks_exact(DIMS))
        .map(|(d, v)| {
            Record::new(d.id, v.to_vec())
                .with_metadata(json!({"package": d.package, "domain": d.domain, "text": d.text}))
        })
        .collect();
    Ok((records, serde_json::from_str(QUERIES)?))
}

pub(super) async fn run(ctx: Option<Ctx>, a: DemoArgs) -> Result<()> {
    let bucket = ctx
        .as_ref()
        .map_or(DEMO_BUCKET.to_string(), |c| c.bucket.clone());
    let (records, queries) = load()?;
    println!(
        "shoal demo: {} real Debian package descriptions, embedded with all-MiniLM-L6-v2 ({DIMS}-d), and {} real queries\n",
        records.len(),
        queries.len()
    );
    let db = open(&bucket, a.partitions).await?;
    ingest(&db, &records, a.partitions).await?;
    let example_id = search_examples(&db, &records, &queries).await?;
    hybrid_example(&db, &queries).await?;
    measure(&db, &records, &queries).await?;
    db.close().await?;
    print_next_steps(&bucket, &queries, &example_id)
}

/// Opens (or creates) the demo index with the demo data's settings.
async fn open(bucket: &str, partitions: u32) -> Result<Db> {
    let settings = RequestedSettings {
        partition_count: Some(partitions),
        dimensions: Some(DIMS as u32),
        distance_metric: Some(Metric::Cosine),
        embedding_model: Some("all-MiniLM-L6-v2".into()),
        instance_timeout_seconds: None,
        text_fields: Some(text_fields()),
    };
    let opts = OpenOptions {
        cluster: JoinOptions {
            settings,
            role: Some(Role::Both),
            env: Default::default(),
            ..Default::default()
        },
        ..Default::default()
    };
    let db = Db::open(bucket, opts).await.with_context(|| {
        format!("cannot use {bucket} for the demo (pass --bucket to pick another place)")
    })?;
    // A demo index made before text search: make its text searchable.
    if db.config().settings.text_fields.is_none() {
        let fields = serde_json::to_value(text_fields())?;
        db.set_settings(&[("textFields".into(), fields)]).await?;
        db.refresh_config().await?;
    }
    Ok(db)
}

/// The demo's full-text searchable key: each package's description.
fn text_fields() -> BTreeMap<String, TextField> {
    let en = TextField {
        analyzer: "en".into(),
    };
    [("text".to_string(), en)].into()
}

/// Step 2b: a query whose package a term match finds better than its
/// embedding does: its rank by vector alone, then in a hybrid search
/// where the user also names the package as text ("iniconfig"; BM25 on
/// the descriptions, fused with the vector's ranking by reciprocal rank).
async fn hybrid_example(db: &Db, queries: &[Query]) -> Result<()> {
    let Some(q) = queries.iter().find(|q| q.text.contains("INI")) else {
        return Ok(());
    };
    let target = "python3-iniconfig";
    let rank = |resp: &shoal::api::SearchResponse| {
        resp.results
            .iter()
            .position(|h| h.id == target)
            .map_or("not in the top 10".to_string(), |r| format!("#{}", r + 1))
    };
    let vector = db.search(&SearchRequest::new(q.vector.clone(), 10)).await?;
    let mut req = SearchRequest::new(q.vector.clone(), 10);
    let name = "iniconfig";
    req.text.push(QueryText {
        key: Some("text".into()),
        text: name.into(),
    });
    let t = Instant::now();
    let mut hybrid = db.search(&req).await?;
    println!(
        "   hybrid: \"{}\" by vector alone ranks {target} {}; with the text \"{name}\" \
         (BM25) fused in, {}  ({:.2} ms)",
        q.text,
        rank(&vector),
        rank(&hybrid),
        t.elapsed().as_secs_f64() * 1e3
    );
    hybrid.results.truncate(5);
    print_hits(&hybrid.results);
    println!();
    Ok(())
}

/// Step 1: writes every record and reports the PUTs it took.
async fn ingest(db: &Db, records: &[Record], partitions: u32) -> Result<()> {
    let t = Instant::now();
    let before = db.store_counts();
    let mut flushed = db.add(records).await?;
    flushed += db.flush().await?;
    let reqs = db.store_counts().since(&before);
    println!(
        "1. ingested {} records into {} in {:.0} ms ({} partitions, {} segment PUTs + {} manifest commits)\n",
        flushed.records,
        db.describe(),
        t.elapsed().as_secs_f64() * 1e3,
        partitions,
        flushed.segments,
        reqs.put.saturating_sub(flushed.segments as u64)
    );
    Ok(())
}

/// Step 2: a few searches with their hits, one of them filtered; returns
/// an id worth looking up (the filtered search's best hit).
async fn search_examples(db: &Db, records: &[Record], queries: &[Query]) -> Result<String> {
    let t = Instant::now();
    db.warm().await?;
    println!(
        "2. searching (reader warmed in {:.0} ms)\n",
        t.elapsed().as_secs_f64() * 1e3
    );
    for q in queries.iter().take(4) {
        let req = SearchRequest::new(q.vector.clone(), 5);
        let t = Instant::now();
        let resp = db.search(&req).await?;
        println!(
            "   query: \"{}\"  ({:.2} ms)",
            q.text,
            t.elapsed().as_secs_f64() * 1e3
        );
        print_hits(&resp.results);
        println!();
    }
    let fq = queries
        .iter()
        .find(|q| q.domain == "python")
        .unwrap_or(&queries[0]);
    let filter = parse_filter_expr(&format!("domain={}", fq.domain))?;
    let req = SearchRequest {
        filter: Some(filter),
        ..SearchRequest::new(fq.vector.clone(), 5)
    };
    let t = Instant::now();
    let resp = db.search(&req).await?;
    println!(
        "   query: \"{}\" with filter domain={}  ({:.2} ms)",
        fq.text,
        fq.domain,
        t.elapsed().as_secs_f64() * 1e3
    );
    print_hits(&resp.results);
    println!();
    Ok(resp
        .results
        .first()
        .map_or_else(|| records[0].id.clone(), |h| h.id.clone()))
}

/// Step 3: recall against exact brute force and latency over every demo query.
async fn measure(db: &Db, records: &[Record], queries: &[Query]) -> Result<()> {
    let (mut recall, mut lat) = (0.0, Vec::new());
    for q in queries {
        let req = SearchRequest {
            consistency: Consistency::Bounded,
            ..SearchRequest::new(q.vector.clone(), 10)
        };
        let t = Instant::now();
        let resp = db.search(&req).await?;
        lat.push(t.elapsed().as_secs_f64() * 1e3);
        let got: Vec<String> = resp.results.into_iter().map(|h| h.id).collect();
        let truth = exact_top_k(records, &q.vector, 10, Metric::Cosine);
        recall += got.iter().filter(|id| truth.contains(id)).count() as f64 / 10.0;
    }
    lat.sort_by(f64::total_cmp);
    println!(
        "3. {} queries: recall@10 vs exact brute force {:.3}, latency p50 {:.2} ms, max {:.2} ms\n",
        queries.len(),
        recall / queries.len() as f64,
        percentile(&lat, 50.0),
        lat.last().copied().unwrap_or(0.0)
    );
    Ok(())
}

/// Step 4: writes the queries to a file and prints commands to try on the index.
fn print_next_steps(bucket: &str, queries: &[Query], example_id: &str) -> Result<()> {
    let qfile = std::env::temp_dir().join("shoal-demo-queries.jsonl");
    let lines: Vec<String> = queries
        .iter()
        .map(|q| json!({"text": q.text, "domain": q.domain, "vector": q.vector}).to_string())
        .collect();
    std::fs::write(&qfile, lines.join("\n") + "\n")?;
    let b = if bucket == DEMO_BUCKET {
        "./shoal-demo".to_string()
    } else {
        bucket.to_string()
    };
    println!("try next:");
    println!("  shoal --bucket {b} status");
    println!(
        "  shoal --bucket {b} search --query-file {} --query-index 5 -k 5",
        qfile.display()
    );
    println!(
        "  shoal --bucket {b} search --query-file {} --query-index 5 --filter 'domain=python'",
        qfile.display()
    );
    println!("  shoal --bucket {b} get {example_id} --json");
    println!("  shoal --bucket {b} verify");
    Ok(())
}
