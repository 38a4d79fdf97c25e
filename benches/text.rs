//! Full-text search on the shared dataset (issue 31): the package
//! descriptions (`docs.jsonl`, gunzipped) as a searchable key `text`
//! (analyzer `en`), the base vectors alongside, indexed into shards.
//! Reports warm p50 of text queries next to vector queries on the same
//! index, and cold text queries (fresh readers, `--latency-ms` per
//! request): requests and sequential rounds. With `--dump DIR` it writes
//! what `scripts/bm25-reference.py` compares with a reference BM25
//! (bm25s, method "lucene"): every document's and query's terms as
//! shoal's analyzer made them, and shoal's top 10 with scores.
//!
//! ```sh
//! D=../shared/datasets/debian-pkgdesc-minilm384
//! zcat $D/docs.jsonl.gz > /tmp/docs.jsonl
//! cargo bench --bench text -- --docs /tmp/docs.jsonl --base $D/base.fvecs \
//!   --queries $D/query.fvecs --dump /tmp/bm25
//! python3 scripts/bm25-reference.py /tmp/bm25
//! ```

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::{json, Value};
use shoal::api::{Consistency, Record, RequestedSettings, Role, SearchRequest, TextField};
use shoal::reader::ReaderOptions;
use shoal::store::memory::MemoryStore;
use shoal::store::Counted;
use shoal::vocab::Analyzer;
use shoal::{Db, OpenOptions};

#[derive(Parser)]
struct Args {
    #[arg(long)]
    docs: PathBuf,
    #[arg(long)]
    base: PathBuf,
    #[arg(long)]
    queries: PathBuf,
    /// Text queries (half package names, half three summary words).
    #[arg(long, default_value_t = 200)]
    text_queries: usize,
    #[arg(long, default_value_t = 5)]
    cold_queries: usize,
    #[arg(long, default_value_t = 20)]
    latency_ms: u64,
    #[arg(long)]
    dump: Option<PathBuf>,
    /// cargo bench passes --bench; accept and ignore it.
    #[arg(long, hide = true)]
    bench: bool,
}

const MAX_TEXT_BYTES: usize = 60_000;

fn p50(mut ms: Vec<f64>) -> f64 {
    ms.sort_by(f64::total_cmp);
    ms[ms.len() / 2]
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let base = shoal::dataset::read_fvecs(&args.base)?;
    let vector_queries = shoal::dataset::read_fvecs(&args.queries)?;
    let mut docs: Vec<Value> = std::io::BufReader::new(std::fs::File::open(&args.docs)?)
        .lines()
        .map(|l| Ok(serde_json::from_str(&l?)?))
        .collect::<anyhow::Result<_>>()?;
    // A record's metadata holds at most 64 KiB: the few longer
    // descriptions are cut (the reference sees the same text).
    for d in &mut docs {
        let text = d["text"].as_str().unwrap_or_default();
        if text.len() > MAX_TEXT_BYTES {
            let mut cut = MAX_TEXT_BYTES;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            d["text"] = json!(text[..cut]);
        }
    }
    assert_eq!(docs.len(), base.len(), "one document per base vector");
    let store = Arc::new(Counted::new(Arc::new(MemoryStore::unique())));
    let mut opts = OpenOptions::default();
    opts.cluster.settings = RequestedSettings {
        dimensions: Some(base[0].len() as u32),
        text_fields: Some(
            [(
                "text".to_string(),
                TextField {
                    analyzer: "en".into(),
                },
            )]
            .into(),
        ),
        ..Default::default()
    };
    opts.cluster.role = Some(Role::Both);
    opts.compact_every = None;
    let db = Db::open_store(store.clone(), opts).await?;
    let t = Instant::now();
    for (chunk, vectors) in docs.chunks(1000).zip(base.chunks(1000)) {
        let records: Vec<Record> = chunk
            .iter()
            .zip(vectors)
            .map(|(d, v)| {
                Record::new(d["id"].to_string(), v.clone()).with_metadata(json!({
                    "package": d["package"], "text": d["text"], "domain": d["domain"]}))
            })
            .collect();
        db.upsert(&records).await?;
    }
    db.compact(Default::default()).await?;
    let round = db.index(true).await?;
    println!(
        "ingest and index: {} records, {} shard rows, {:.1} s",
        docs.len(),
        round.rows_out,
        t.elapsed().as_secs_f64()
    );
    // Queries from real package names and summary words, drawn evenly.
    let step = docs.len() / args.text_queries.max(1);
    let texts: Vec<String> = (0..args.text_queries)
        .map(|i| {
            let d = &docs[i * step + 7];
            if i % 2 == 0 {
                d["package"].as_str().unwrap().to_string()
            } else {
                let text = d["text"].as_str().unwrap();
                let summary = text.split_once(": ").map_or(text, |(_, s)| s);
                let words: Vec<&str> = summary.lines().next().unwrap().split_whitespace().collect();
                words[..words.len().min(3)].join(" ")
            }
        })
        .collect();
    let warm = |req: &SearchRequest| {
        let mut r = req.clone();
        r.consistency = Consistency::Eventual;
        r.include_metadata = false;
        r
    };
    let mut text_ms = Vec::new();
    let mut results = Vec::new();
    for (i, q) in texts.iter().enumerate() {
        let req = warm(&SearchRequest::text(Some("text"), q, 10));
        let t = Instant::now();
        let resp = db.search(&req).await?;
        text_ms.push(t.elapsed().as_secs_f64() * 1e3);
        let top: Vec<Value> = resp
            .results
            .iter()
            .map(|h| json!([h.id, h.score]))
            .collect();
        results.push(json!({"query": i, "text": q, "top": top}));
    }
    let mut vector_ms = Vec::new();
    for v in vector_queries.iter().take(args.text_queries) {
        let req = warm(&SearchRequest::new(v.clone(), 10));
        let t = Instant::now();
        db.search(&req).await?;
        vector_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    println!(
        "warm p50: text {:.2} ms, vector {:.2} ms ({} queries each)",
        p50(text_ms.clone()),
        p50(vector_ms.clone()),
        texts.len()
    );
    let latency = Duration::from_millis(args.latency_ms);
    let (mut cold_ms, mut requests, mut rounds) = (Vec::new(), 0u64, 0u64);
    for q in texts.iter().take(args.cold_queries) {
        let reader = db.reading_copy(ReaderOptions::for_role(Role::Reader), Some(latency));
        let mut req = SearchRequest::text(Some("text"), q, 10);
        req.consistency = Consistency::Strong;
        let t = Instant::now();
        let resp = reader.search(&req).await?;
        cold_ms.push(t.elapsed().as_secs_f64() * 1e3);
        requests += resp.stats.requests.total();
        rounds = rounds.max(resp.stats.rounds);
        reader.close().await?;
    }
    println!(
        "cold text query ({} ms per request): p50 {:.0} ms, {:.1} requests, at most {} rounds",
        args.latency_ms,
        p50(cold_ms),
        requests as f64 / args.cold_queries as f64,
        rounds
    );
    if let Some(dir) = &args.dump {
        std::fs::create_dir_all(dir)?;
        let mut f = std::io::BufWriter::new(std::fs::File::create(dir.join("docs.jsonl"))?);
        for d in &docs {
            let terms = shoal::text::analyzer::terms(Analyzer::En, d["text"].as_str().unwrap());
            writeln!(f, "{}", json!({"id": d["id"].to_string(), "terms": terms}))?;
        }
        let mut f = std::io::BufWriter::new(std::fs::File::create(dir.join("queries.jsonl"))?);
        for r in &results {
            let terms = shoal::text::analyzer::terms(Analyzer::En, r["text"].as_str().unwrap());
            let mut r = r.clone();
            r["terms"] = json!(terms);
            writeln!(f, "{r}")?;
        }
        println!("wrote {}", dir.display());
    }
    db.close().await?;
    Ok(())
}
