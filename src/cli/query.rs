//! `search`, `get`, `delete`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::Value;
use shoal::api::{Consistency, Hit, QueryText, SearchRequest};

use super::{ConsistencyArg, Ctx};

#[derive(Args)]
pub(crate) struct SearchArgs {
    /// The query vector as a JSON array, e.g. '[0.1, 0.2, ...]'.
    #[arg(long, conflicts_with_all = ["vector_file", "query_file"])]
    pub vector: Option<String>,
    /// A file holding the query vector: a JSON array, or the first row of a .fvecs/.npy file.
    #[arg(long, conflicts_with = "query_file")]
    pub vector_file: Option<PathBuf>,
    /// A file of query vectors (.fvecs, .npy or JSONL with a "vector" field) ...
    #[arg(long, requires = "query_index")]
    pub query_file: Option<PathBuf>,
    /// ... and which row of it to use (0-based).
    #[arg(long)]
    pub query_index: Option<usize>,
    /// Full-text query (BM25) in the index's searchable key (see `init
    /// --text-field`); with a vector too, a hybrid search (reciprocal rank
    /// fusion of both rankings).
    #[arg(long)]
    pub text: Option<String>,
    /// The searchable key `--text` searches (default: the index's only one).
    #[arg(long, requires = "text")]
    pub text_key: Option<String>,
    /// How many results.
    #[arg(short, long, default_value_t = 10)]
    pub k: usize,
    /// Metadata filter, e.g. "domain=medical and price<10" (see `--help` of the README).
    #[arg(long, conflicts_with = "filter_json")]
    pub filter: Option<String>,
    /// Metadata filter as JSON, e.g. '{"domain": "medical", "price": {"$lt": 10}}'.
    #[arg(long)]
    pub filter_json: Option<String>,
    /// eventual (cached), bounded (revalidate after 1 s) or strong (revalidate first).
    #[arg(long, value_enum, default_value = "bounded")]
    pub consistency: ConsistencyArg,
    /// Include each result's vector (JSON output).
    #[arg(long)]
    pub include_vectors: bool,
    /// Return results from the partitions that could be read when some cannot.
    #[arg(long)]
    pub allow_partial: bool,
}

fn first_row(path: &Path, index: usize) -> Result<Vec<f32>> {
    Ok(shoal::api::row_of(path, index)?)
}

fn query_vector(a: &SearchArgs) -> Result<Vec<f32>> {
    if let Some(v) = &a.vector {
        return serde_json::from_str(v)
            .context("--vector: expected a JSON array of numbers, e.g. '[0.1, 0.2]'");
    }
    if let Some(f) = &a.vector_file {
        return first_row(f, 0);
    }
    if let (Some(f), Some(i)) = (&a.query_file, a.query_index) {
        return first_row(f, i);
    }
    if a.text.is_some() {
        return Ok(Vec::new());
    }
    bail!(
        "give the query vector with --vector, --vector-file, or --query-file with \
         --query-index, or a full-text query with --text"
    )
}

/// A short, one-line excerpt of a hit's metadata (text first, if any).
fn excerpt(hit: &Hit) -> String {
    let Some(m) = &hit.metadata else {
        return String::new();
    };
    let text = ["text", "description", "title", "name"]
        .iter()
        .find_map(|k| m.get(*k).and_then(Value::as_str).map(str::to_string))
        .unwrap_or_else(|| {
            let mut m = m.clone();
            m.remove("domain");
            Value::Object(m).to_string()
        });
    let one_line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut out: String = one_line.chars().take(70).collect();
    if one_line.chars().count() > 70 {
        out.push('…');
    }
    out
}

pub(super) fn print_hits(hits: &[Hit]) {
    println!(
        "{:>4}  {:<32} {:>8}  {:<12} metadata",
        "rank", "id", "score", "domain"
    );
    for (i, h) in hits.iter().enumerate() {
        let domain = h
            .metadata
            .as_ref()
            .and_then(|m| m.get("domain"))
            .and_then(Value::as_str)
            .unwrap_or("");
        println!(
            "{:>4}  {:<32} {:>8.4}  {:<12} {}",
            i + 1,
            h.id,
            h.score,
            domain,
            excerpt(h)
        );
    }
}

pub(super) async fn search(ctx: &Ctx, a: SearchArgs) -> Result<()> {
    let vector = query_vector(&a)?;
    let filter = match (&a.filter, &a.filter_json) {
        (Some(expr), _) => Some(shoal::api::parse_filter_expr(expr)?),
        (None, Some(j)) => {
            let v: Value = serde_json::from_str(j).context("--filter-json: not valid JSON")?;
            shoal::api::parse_filter(&v)?;
            Some(v)
        }
        _ => None,
    };
    let db = ctx.observe().await?;
    let text = a.text.iter().map(|text| QueryText {
        key: a.text_key.clone(),
        text: text.clone(),
    });
    let req = SearchRequest {
        filter,
        text: text.collect(),
        consistency: a.consistency.into(),
        include_vectors: a.include_vectors,
        allow_partial: a.allow_partial,
        ..SearchRequest::new(vector, a.k)
    };
    let t = Instant::now();
    let resp = db.search(&req).await?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    if ctx.json {
        return ctx.print_json(&resp);
    }
    print_hits(&resp.results);
    let s = &resp.stats;
    println!(
        "{} results in {ms:.1} ms: {} partitions, {} vectors compared, {} store requests",
        resp.results.len(),
        s.partitions_searched,
        s.vectors_compared,
        s.requests.total()
    );
    for f in &resp.failed_partitions {
        println!(
            "PARTIAL: partition {} was not searched: {}",
            f.partition, f.error
        );
    }
    Ok(())
}

pub(super) async fn get(ctx: &Ctx, id: &str, consistency: Consistency) -> Result<()> {
    let db = ctx.observe().await?;
    let Some(rec) = db.get(id, consistency).await? else {
        bail!("no record with id {id:?}");
    };
    if ctx.json {
        return ctx.print_json(&rec);
    }
    println!("id         {}", rec.id);
    println!(
        "partition  {} (segment seq {}, position {})",
        rec.partition, rec.seq, rec.position
    );
    let head: Vec<String> = rec
        .vector
        .iter()
        .take(6)
        .map(|x| format!("{x:.4}"))
        .collect();
    println!(
        "vector     {} dimensions: [{}{}]",
        rec.vector.len(),
        head.join(", "),
        if rec.vector.len() > 6 { ", …" } else { "" }
    );
    println!(
        "metadata   {}",
        serde_json::to_string_pretty(&rec.metadata)?
    );
    Ok(())
}

pub(super) async fn delete(ctx: &Ctx, ids: &[String]) -> Result<()> {
    let db = ctx.join_writer().await?;
    let result = db.delete(ids).await;
    db.close().await?;
    let receipt = result?;
    if ctx.json {
        return ctx.print_json(&receipt);
    }
    println!(
        "deleted {} id(s) ({} segment(s) committed)",
        receipt.records,
        receipt.segments.len()
    );
    Ok(())
}
