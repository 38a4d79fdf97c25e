//! Writes the seed corpus in `fuzz/seeds/<target>/` from shoal's own
//! encoders, so the seeds follow the formats as they evolve:
//!
//! ```sh
//! cargo run --manifest-path fuzz/Cargo.toml --example make_corpus
//! ```

use std::fs;
use std::path::Path;

use serde_json::json;
use shoal::api::{parse_body, DeleteRequest, UpsertRequest};
use shoal::coord::config::parse_config;
use shoal::coord::manifest::{parse_manifest, Manifest, RetiredEntry, SegmentEntry};
use shoal::coord::Metric;
use shoal::filter::{parse_filter, parse_filter_expr};
use shoal::index::hnsw::{HnswIndex, HnswParams};
use shoal::index::ivf::{self, IvfIndex, IvfParams};
use shoal::index::AnnIndex;
use shoal::reader::SearchRequest;
use shoal::record::Prepared;
use shoal::segment::{
    decode_segment, encode_segment, encode_segment_groups, SegmentHeader, FORMAT_VERSION,
};
use shoal_fuzz::{records, uncompressed};

/// Writes one seed after checking that the target's parser accepts it
/// (the last filter seed is deliberately invalid), so the seeds lead the
/// fuzzer into the accepting paths, not only the error paths.
fn write(target: &str, name: &str, bytes: &[u8]) {
    let accepted = match target {
        "segment_decode" => decode_segment("seed.seg", bytes).is_ok(),
        "ann_index" => {
            let (d, n) = (usize::from(bytes[0]) + 1, usize::from(bytes[1]));
            AnnIndex::parse(&bytes[4..], d, n).is_ok()
        }
        "manifest_parse" => {
            let p = serde_json::from_slice::<serde_json::Value>(bytes).expect("json")["partition"]
                .as_u64()
                .expect("partition") as u32;
            parse_manifest(p, bytes).is_ok()
        }
        "config_parse" => parse_config("config.json", bytes).is_ok(),
        "filter_parse" => {
            let s = std::str::from_utf8(bytes).expect("utf-8");
            let v = serde_json::from_str(s).or_else(|_| parse_filter_expr(s));
            v.is_ok_and(|v| parse_filter(&v).is_ok()) || name.ends_with("09")
        }
        "api_request" => {
            let body = &bytes[1..];
            match bytes[0] {
                0 => parse_body::<UpsertRequest>(body).is_ok(),
                1 => parse_body::<DeleteRequest>(body).is_ok(),
                2 => parse_body::<SearchRequest>(body).is_ok(),
                _ => std::str::from_utf8(body).is_ok(),
            }
        }
        "lambda_event" => serde_json::from_slice::<serde_json::Value>(bytes).is_ok(),
        _ => unreachable!("unknown target {target}"),
    };
    assert!(
        accepted,
        "seed {target}/{name} is not accepted by its parser"
    );
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("seeds")
        .join(target);
    fs::create_dir_all(&dir).expect("create seed folder");
    fs::write(dir.join(name), bytes).expect("write seed");
}

fn header(d: usize, metric: Metric, n: usize, has_index: bool) -> SegmentHeader {
    SegmentHeader {
        format_version: FORMAT_VERSION,
        dimensions: d as u32,
        metric,
        record_count: n as u64,
        created_at_ms: 1_795_000_000_000,
        writer_id: "writer-1".into(),
        has_index,
    }
}

fn vectors(recs: &[Prepared], d: usize) -> Vec<f32> {
    recs.iter()
        .flat_map(|r| {
            if r.tombstone {
                vec![0.0; d]
            } else {
                r.vector.clone()
            }
        })
        .collect()
}

/// IVF index bytes and the records reordered into their clusters.
fn ivf_index(recs: &[Prepared], d: usize, metric: Metric) -> (Vec<u8>, Vec<Vec<Prepared>>) {
    let p = IvfParams {
        nlist: Some(3),
        ..IvfParams::default()
    };
    let (centroids, assign) = ivf::train(&vectors(recs, d), d, metric, &p);
    let nlist = centroids.len() / d;
    let mut groups = vec![Vec::new(); nlist];
    for (r, c) in recs.iter().zip(&assign) {
        groups[*c as usize].push(r.clone());
    }
    let mut starts = vec![0u32];
    for g in &groups {
        starts.push(starts.last().expect("starts") + g.len() as u32);
    }
    let ix = IvfIndex {
        dims: d,
        centroids,
        starts,
    };
    (ix.to_bytes(), groups)
}

fn hnsw_index(recs: &[Prepared], d: usize, metric: Metric) -> Vec<u8> {
    let p = HnswParams {
        ef_construction: 16,
        ef_search: 8,
        seed: 1,
    };
    HnswIndex::build(&vectors(recs, d), d, metric, &p).to_bytes()
}

fn segments() {
    let t = "segment_decode";
    let (d, n) = (4, 12);
    let recs = records(n, d);
    let plain = encode_segment(&header(d, Metric::Cosine, n, false), &recs, None);
    let empty = encode_segment(&header(3, Metric::Dot, 0, false), &[], None);
    let (ivf, groups) = ivf_index(&recs, d, Metric::Euclidean);
    let slices: Vec<&[Prepared]> = groups.iter().map(|g| g.as_slice()).collect();
    let grouped =
        encode_segment_groups(&header(d, Metric::Euclidean, n, true), &slices, Some(&ivf));
    let hnsw = hnsw_index(&recs, d, Metric::Cosine);
    let graph = encode_segment(&header(d, Metric::Cosine, n, true), &recs, Some(&hnsw));
    for (name, seg) in [
        ("plain", &plain),
        ("empty", &empty),
        ("ivf-groups", &grouped),
        ("hnsw", &graph),
    ] {
        write(t, &format!("{name}.seg"), seg);
        let raw = uncompressed(seg).expect("own segments re-lay");
        write(t, &format!("{name}-raw.seg"), &raw);
    }
}

fn ann_indexes() {
    let t = "ann_index";
    for (d, n) in [(2usize, 9usize), (4, 12)] {
        let recs = records(n, d);
        let prefix = [(d - 1) as u8, n as u8, 1, 0b1011_0110];
        let (ivf, _) = ivf_index(&recs, d, Metric::Euclidean);
        let hnsw = hnsw_index(&recs, d, Metric::Euclidean);
        for (kind, ix) in [("ivf", ivf), ("hnsw", hnsw)] {
            write(
                t,
                &format!("{kind}-{d}d-{n}.bin"),
                &[&prefix[..], &ix].concat(),
            );
        }
    }
}

fn manifests() {
    let t = "manifest_parse";
    let entry = |key: &str, seq: u64, indexed: bool| SegmentEntry {
        key: key.into(),
        seq,
        records: 1000,
        tombstones: 3,
        bytes: 1_234_567,
        created_at: "2026-11-21T10:00:00Z".into(),
        writer_id: "writer-1".into(),
        indexed,
        section: None,
        extra: Default::default(),
    };
    let mut m = Manifest::empty(3);
    m.next_seq = 9;
    m.segments = vec![
        entry("vectors/p003/seg-000005-c-ab12.seg", 5, true),
        entry("vectors/p003/seg-000007-w1-cd34.seg", 7, false),
        entry("vectors/p003/seg-000008-w2-ef56.seg", 8, false),
    ];
    m.retired = vec![RetiredEntry {
        seq: None,
        key: "vectors/p003/seg-000001-w1-0001.seg".into(),
        retired_at: "2026-11-21T09:00:00Z".into(),
        section: None,
    }];
    // A section of a batch object (several partitions' segments in one).
    let mut batch = entry(
        "vectors/p003/1796444268416-b9aba819a9d72f35126c61ed974e6284e.seg",
        8,
        false,
    );
    batch.section = Some(shoal::coord::manifest::Section {
        offset: 4096,
        length: 2048,
        object_bytes: Some(16_384),
    });
    m.next_seq = 10;
    m.segments.push(SegmentEntry { seq: 9, ..batch });
    m.version = 2;
    m.extra
        .insert("futureField".into(), json!({"kept": [1, 2.5]}));
    let pretty = serde_json::to_vec_pretty(&m).expect("serialize");
    write(t, "three-segments.json", &pretty);
    let empty = serde_json::to_vec(&Manifest::empty(0)).expect("serialize");
    write(t, "empty.json", &empty);
}

fn configs() {
    let t = "config_parse";
    let base = json!({
        "version": 1,
        "updated": "2026-11-21T10:00:00Z",
        "settings": {
            "partitionStrategy": "hash",
            "partitionCount": 8,
            "embeddingModel": "all-MiniLM-L6-v2",
            "dimensions": 384,
            "distanceMetric": "cosine",
            "instanceTimeoutSeconds": 30
        }
    });
    write(
        t,
        "minimal.json",
        &serde_json::to_vec_pretty(&base).expect("json"),
    );
    let mut full = base.clone();
    full["settings"]["index"] = json!({
        "kind": "hnsw", "minRecords": 500, "nlist": 16, "nprobe": 4,
        "efConstruction": 64, "efSearch": 32, "maxSegmentRecords": 50000,
        "hnswMaxSegmentRecords": 20000, "compactMinSegments": 4,
        "compactDeadFraction": 0.25
    });
    full["settings"]["domainRules"] = json!([
        {"fields": ["symptoms", "diagnosis"], "domain": "medical"}
    ]);
    full["settings"]["newerSetting"] = json!(true);
    full["topLevelExtra"] = json!("kept");
    write(
        t,
        "full.json",
        &serde_json::to_vec_pretty(&full).expect("json"),
    );
}

fn filters() {
    let t = "filter_parse";
    let seeds: [&str; 10] = [
        r#"{"domain": "web"}"#,
        r#"{"stars": {"$gte": 10, "$lt": 1000}}"#,
        r#"{"$or": [{"domain": {"$in": ["web", "cli"]}}, {"ok": true}]}"#,
        r#"{"$and": [{"tags": {"$exists": true}}, {"name": {"$ne": null}}]}"#,
        r#"{"nested.x": {"$nin": [1, 2, "three"]}, "score": {"$gt": 0.5}}"#,
        "domain=medical and price<10",
        r#"(domain = "legal" or tag in [a, b]) and sku exists and status != retired"#,
        "stars >= 100 or (ok = true and name not exists)",
        "score <= -1.5e3 and domain in [\"x y\", z, 3, null]",
        "not_a_filter ===",
    ];
    for (i, s) in seeds.iter().enumerate() {
        write(t, &format!("seed-{i:02}"), s.as_bytes());
    }
}

fn requests() {
    let t = "api_request";
    let seeds: [(u8, &str); 7] = [
        (
            0,
            r#"{"records": [{"id": "a", "vector": [1, 0, 0], "metadata": {"domain": "web"}}, {"id": "b", "vector": [0.5, 0.5, 0]}]}"#,
        ),
        (1, r#"{"ids": ["r1", "r2"]}"#),
        (2, r#"{"vector": [1, 1, 1], "k": 5}"#),
        (
            2,
            r#"{"vector": [0, 1, 0], "k": 3, "filter": {"domain": "web", "i": {"$lt": 20}}, "consistency": "strong", "include_vectors": true}"#,
        ),
        (
            2,
            r#"{"vector": [1, 0, 1], "k": 10, "exact": true, "nprobe": 2, "allow_partial": true, "max_staleness_ms": 0}"#,
        ),
        (3, "r7"),
        (3, "../../etc/passwd"),
    ];
    for (i, (endpoint, body)) in seeds.iter().enumerate() {
        write(
            t,
            &format!("seed-{i:02}"),
            &[&[*endpoint][..], body.as_bytes()].concat(),
        );
    }
}

fn events() {
    let t = "lambda_event";
    let http = |method: &str, path: &str, body: &str, b64: bool| {
        json!({
            "version": "2.0",
            "rawPath": path,
            "requestContext": {"http": {"method": method, "path": path}},
            "body": body,
            "isBase64Encoded": b64,
        })
    };
    let seeds = [
        json!({"search": {"vector": [1, 1, 0], "k": 3}}),
        json!({"get": {"id": "r4"}}),
        json!({"vector": [0, 1, 1], "k": 2, "filter": {"domain": "web"}}),
        http(
            "POST",
            "/v1/search",
            r#"{"vector": [1, 0, 0], "k": 2}"#,
            false,
        ),
        http("POST", "/v1/search", "eyJ2ZWN0b3IiOiBbMSwgMCwgMF19", true),
        http("GET", "/v1/records/r7", "", false),
        http("GET", "/v1/records/..%2F..%2Fetc", "", false),
        http("DELETE", "/v1/nowhere", "", false),
    ];
    for (i, e) in seeds.iter().enumerate() {
        write(
            t,
            &format!("seed-{i:02}"),
            &serde_json::to_vec(e).expect("json"),
        );
    }
}

fn main() {
    events();
    requests();
    segments();
    ann_indexes();
    manifests();
    configs();
    filters();
    println!("seeds written to fuzz/seeds/");
}
