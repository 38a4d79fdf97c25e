//! Full-text and hybrid search (issue 31) on every backend: BM25 scores
//! equal an independent computation of the formula over the whole
//! corpus, whether the rows sit in tails or in index shards; newest wins
//! and deletes hold for text; filters apply; hybrid fuses by rank; bad
//! input is refused before anything is read or written.

#[macro_use]
mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde_json::json;
use shoal::api::{QueryText, Record, RequestedSettings, SearchRequest, TextField};
use shoal::store::Counted;
use shoal::store::ObjectStore;
use shoal::ErrorKind;
use shoal::{Db, OpenOptions};

backend_tests!(
    bm25_scores_equal_the_formula_in_tails_and_in_shards,
    newer_text_replaces_older_and_deleted_rows_never_match,
    hybrid_search_fuses_the_vector_and_text_rankings,
    shard_text_indexes_leave_out_dead_and_hidden_rows,
    a_text_query_reads_term_blocks_not_every_rows_metadata,
);

const WORDS: [&str; 8] = [
    "apple", "banana", "cherry", "parser", "library", "python", "small", "tool",
];

/// Record `i`'s text: a few words drawn from `i` (some repeated), so
/// document frequencies, term frequencies and lengths all vary.
fn text_of(i: usize) -> String {
    let n = 2 + i % 5;
    (0..n)
        .map(|j| WORDS[(i * 7 + j * j * 3 + j) % WORDS.len()])
        .collect::<Vec<_>>()
        .join(if i.is_multiple_of(2) { " " } else { ", " })
}

fn vector_of(i: usize) -> Vec<f32> {
    vec![(i % 7) as f32, (i / 7) as f32, 1.0 + (i % 3) as f32]
}

fn corpus(n: usize) -> Vec<Record> {
    (0..n)
        .map(|i| {
            let shelf = if i % 3 == 0 { "top" } else { "low" };
            Record::new(format!("doc{i:03}"), vector_of(i)).with_metadata(
                json!({"body": text_of(i), "title": format!("Doc {i}"), "shelf": shelf}),
            )
        })
        .collect()
}

fn text_settings() -> RequestedSettings {
    let fields: BTreeMap<String, TextField> = [
        (
            "body".to_string(),
            TextField {
                analyzer: "standard".into(),
            },
        ),
        (
            "title".to_string(),
            TextField {
                analyzer: "en".into(),
            },
        ),
    ]
    .into();
    RequestedSettings {
        partition_count: Some(4),
        dimensions: Some(3),
        distance_metric: Some(shoal::api::Metric::Euclidean),
        text_fields: Some(fields),
        ..Default::default()
    }
}

async fn open(store: Arc<Counted>) -> Db {
    let mut opts = OpenOptions::default();
    opts.cluster.settings = text_settings();
    opts.cluster.role = Some(shoal::api::Role::Both);
    opts.cluster.background_heartbeat = false;
    opts.compact_every = None;
    Db::open_store(store, opts).await.expect("open")
}

/// The standard analyzer on ASCII text, written independently of shoal:
/// lowercase runs of letters and digits.
fn tokens(s: &str) -> Vec<String> {
    s.split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|t| !t.is_empty())
        .map(str::to_ascii_lowercase)
        .collect()
}

/// BM25 (k1 1.2, b 0.75, Lucene's idf) of every document holding a
/// query term, computed from the whole corpus by hand.
fn expected_bm25(docs: &[(String, String)], query: &str) -> Vec<(String, f64)> {
    let (k1, b) = (1.2, 0.75);
    let toks: Vec<Vec<String>> = docs.iter().map(|(_, t)| tokens(t)).collect();
    let with: Vec<&Vec<String>> = toks.iter().filter(|t| !t.is_empty()).collect();
    let n = with.len() as f64;
    let avg = with.iter().map(|t| t.len()).sum::<usize>() as f64 / n;
    let q = tokens(query);
    let mut out: Vec<(String, f64)> = Vec::new();
    for ((id, _), t) in docs.iter().zip(&toks) {
        let mut score = 0.0;
        for term in &q {
            let tf = t.iter().filter(|x| *x == term).count() as f64;
            if tf == 0.0 {
                continue;
            }
            let df = with.iter().filter(|d| d.contains(term)).count() as f64;
            let idf = (1.0 + (n - df + 0.5) / (df + 0.5)).ln();
            score += idf * (k1 + 1.0) * tf / (tf + k1 * (1.0 - b + b * t.len() as f64 / avg));
        }
        if score > 0.0 {
            out.push((id.clone(), score));
        }
    }
    out.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    out
}

/// Queries read strongly: each sees every write and index round before it.
fn body_query(text: &str, k: usize) -> SearchRequest {
    strong(SearchRequest::text(Some("body"), text, k))
}

fn strong(mut req: SearchRequest) -> SearchRequest {
    req.consistency = shoal::api::Consistency::Strong;
    req
}

async fn ranked(db: &Db, req: &SearchRequest) -> Vec<(String, f64)> {
    let resp = db.search(req).await.expect("search");
    resp.results
        .into_iter()
        .map(|h| {
            let s = h.scores.expect("a text hit carries its scores");
            assert_eq!(s.bm25.len(), 1, "one list, one BM25 score");
            assert_eq!(h.score, s.bm25[0].score, "alone, a text ranks by BM25");
            assert!(h.distance.is_none() && s.fused.is_none());
            (h.id, f64::from(s.bm25[0].score))
        })
        .collect()
}

fn assert_same_ranking(got: &[(String, f64)], want: &[(String, f64)], k: usize) {
    let want = &want[..want.len().min(k)];
    assert_eq!(got.len(), want.len(), "got {got:?}\nwant {want:?}");
    for (g, w) in got.iter().zip(want) {
        // Equal scores may come in either id order only if they tie.
        assert!(
            (g.1 - w.1).abs() < 1e-4 * w.1.max(1.0),
            "score of {} is {}, the formula gives {} for {}\ngot {got:?}\nwant {want:?}",
            g.0,
            g.1,
            w.1,
            w.0
        );
        assert!(g.0 == w.0 || (g.1 - w.1).abs() < 1e-5, "{got:?}\n{want:?}");
    }
}

async fn bm25_scores_equal_the_formula_in_tails_and_in_shards(store: Arc<Counted>) {
    let db = open(store).await;
    let records = corpus(120);
    db.upsert(&records).await.unwrap();
    let docs: Vec<(String, String)> = (0..120)
        .map(|i| (format!("doc{i:03}"), text_of(i)))
        .collect();
    let queries = [
        "apple",
        "parser library",
        "small small tool",
        "python cherry banana",
    ];
    let k = 15;
    let mut before = HashMap::new();
    for q in queries {
        let want = expected_bm25(&docs, q);
        assert!(want.len() > k, "{q}: the check needs more matches than k");
        let got = ranked(&db, &body_query(q, k)).await;
        assert_same_ranking(&got, &want, k);
        before.insert(q, got);
    }
    // The same corpus in index shards: the same scores.
    db.compact(Default::default()).await.unwrap();
    let round = db.index(true).await.unwrap();
    assert!(round.rows_out >= 120, "{round:?}");
    for q in queries {
        let resp = db.search(&body_query(q, k)).await.unwrap();
        assert!(resp.stats.shards_searched > 0, "{:?}", resp.stats);
        let got = ranked(&db, &body_query(q, k)).await;
        assert_same_ranking(&got, &before[q], k);
    }
    // Part in shards, part in tails (new records): still one corpus.
    let more: Vec<Record> = (120..160)
        .map(|i| {
            Record::new(format!("doc{i:03}"), vector_of(i))
                .with_metadata(json!({"body": text_of(i)}))
        })
        .collect();
    db.upsert(&more).await.unwrap();
    let docs: Vec<(String, String)> = (0..160)
        .map(|i| (format!("doc{i:03}"), text_of(i)))
        .collect();
    for q in queries {
        let got = ranked(&db, &body_query(q, k)).await;
        assert_same_ranking(&got, &expected_bm25(&docs, q), k);
    }
    // A filter narrows the list, not the statistics.
    let mut req = body_query("apple", 200);
    req.filter = Some(json!({"shelf": "top"}));
    let got = ranked(&db, &req).await;
    let want: Vec<(String, f64)> = expected_bm25(&docs, "apple")
        .into_iter()
        .filter(|(id, _)| {
            let i: usize = id[3..].parse().unwrap();
            i < 120 && i.is_multiple_of(3)
        })
        .collect();
    assert!(!want.is_empty());
    assert_same_ranking(&got, &want, 200);
    // Vectors come with text hits when asked for, from shards too.
    let mut req = body_query("apple", 5);
    req.include_vectors = true;
    for h in db.search(&req).await.unwrap().results {
        let i: usize = h.id[3..].parse().unwrap();
        assert_eq!(h.vector.as_deref(), Some(&vector_of(i)[..]), "{}", h.id);
    }
    db.close().await.unwrap();
}

async fn newer_text_replaces_older_and_deleted_rows_never_match(store: Arc<Counted>) {
    let db = open(store).await;
    let rec = |id: &str, body: &str| {
        Record::new(id, vec![1.0, 2.0, 3.0]).with_metadata(json!({"body": body}))
    };
    db.upsert(&[
        rec("a", "zebra crossing"),
        rec("b", "zebra stripes"),
        rec("c", "plain road"),
    ])
    .await
    .unwrap();
    let ids = |resp: shoal::api::SearchResponse| -> Vec<String> {
        let mut v: Vec<String> = resp.results.into_iter().map(|h| h.id).collect();
        v.sort();
        v
    };
    for indexed in [false, true] {
        let zebra = ids(db.search(&body_query("zebra", 10)).await.unwrap());
        assert_eq!(zebra, ["a", "b"], "indexed: {indexed}");
        if !indexed {
            db.compact(Default::default()).await.unwrap();
            db.index(true).await.unwrap();
        }
    }
    // Newer versions in the tails, older ones in shards.
    db.upsert(&[rec("a", "horse crossing")]).await.unwrap();
    db.delete(&["b".to_string()]).await.unwrap();
    for pass in ["tail over shard", "all in shards"] {
        assert!(
            db.search(&body_query("zebra", 10))
                .await
                .unwrap()
                .results
                .is_empty(),
            "{pass}: a superseded or deleted row's text never matches"
        );
        assert_eq!(
            ids(db.search(&body_query("horse", 10)).await.unwrap()),
            ["a"],
            "{pass}"
        );
        assert_eq!(
            ids(db.search(&body_query("crossing road", 10)).await.unwrap()),
            ["a", "c"],
            "{pass}"
        );
        db.compact(Default::default()).await.unwrap();
        db.index(true).await.unwrap();
    }
    db.close().await.unwrap();
}

/// The statistics a shard's text index gives, less its dead rows (its
/// deletion vector's record of them) and the rows newer tail records
/// hide, equal the formula over the live corpus at every step.
async fn shard_text_indexes_leave_out_dead_and_hidden_rows(store: Arc<Counted>) {
    let db = open(store).await;
    db.upsert(&corpus(200)).await.unwrap();
    db.compact(Default::default()).await.unwrap();
    db.index(true).await.unwrap();
    let mut docs: BTreeMap<String, String> = (0..200)
        .map(|i| (format!("doc{i:03}"), text_of(i)))
        .collect();
    let queries = [
        "apple",
        "parser library",
        "small small tool",
        "banana cherry",
    ];
    let check = |docs: &BTreeMap<String, String>| {
        let docs: Vec<(String, String)> = docs.clone().into_iter().collect();
        queries.map(|q| (q, expected_bm25(&docs, q)))
    };
    for (q, want) in check(&docs) {
        assert_same_ranking(&ranked(&db, &body_query(q, 30)).await, &want, 30);
    }
    // Newer versions of some rows (other words, longer) and deletes of
    // others: in the tails, hiding their shard rows.
    let newer: Vec<Record> = (0..200)
        .step_by(9)
        .map(|i| {
            let body = format!("{} apple apple tool", text_of(i + 1));
            docs.insert(format!("doc{i:03}"), body.clone());
            Record::new(format!("doc{i:03}"), vector_of(i)).with_metadata(json!({"body": body}))
        })
        .collect();
    db.upsert(&newer).await.unwrap();
    let gone: Vec<String> = (5..200).step_by(13).map(|i| format!("doc{i:03}")).collect();
    for id in &gone {
        docs.remove(id);
    }
    db.delete(&gone).await.unwrap();
    for pass in ["hidden by the tails", "dead in the shards"] {
        for (q, want) in check(&docs) {
            let got = ranked(&db, &body_query(q, 30)).await;
            assert!(got.len() >= 10, "{pass}: {q}");
            assert_same_ranking(&got, &want, 30);
        }
        db.compact(Default::default()).await.unwrap();
        db.index(true).await.unwrap();
    }
    db.close().await.unwrap();
}

/// A text query on indexed shards reads the query terms' blocks and the
/// hits' clusters, not every row's metadata: a cold reader's query for a
/// rare term reads a small share of the shards' bytes.
async fn a_text_query_reads_term_blocks_not_every_rows_metadata(store: Arc<Counted>) {
    let db = open(store.clone()).await;
    let n = 3000;
    // Metadata that does not compress away: what a scan would read.
    let pad = |i: usize| -> String {
        (0..40)
            .map(|j| {
                format!(
                    "{:x}",
                    (i * 7919 + j * 104_729).wrapping_mul(2_654_435_761) % 65_521
                )
            })
            .collect::<Vec<_>>()
            .join("")
    };
    let records: Vec<Record> = (0..n)
        .map(|i| {
            Record::new(format!("doc{i:04}"), vector_of(i))
                .with_metadata(json!({"body": format!("uniq{i} {}", text_of(i)), "pad": pad(i)}))
        })
        .collect();
    for chunk in records.chunks(1000) {
        db.upsert(chunk).await.unwrap();
    }
    db.compact(Default::default()).await.unwrap();
    db.index(true).await.unwrap();
    db.close().await.unwrap();
    let shard_bytes: u64 = store
        .list("index/shards/")
        .await
        .unwrap()
        .iter()
        .map(|o| o.size)
        .sum();
    assert!(shard_bytes > 0);
    let db = open(store.clone()).await;
    let before = store.counts();
    let resp = db.search(&body_query("uniq1234", 1)).await.unwrap();
    let read = store.counts().since(&before);
    assert_eq!(resp.results.len(), 1);
    assert_eq!(resp.results[0].id, "doc1234");
    assert_eq!(
        resp.results[0].metadata.as_ref().unwrap()["pad"],
        json!(pad(1234)),
        "a hit found by the text index carries its metadata"
    );
    assert!(
        read.bytes_read * 5 < shard_bytes,
        "a rare term read {} of {} shard bytes",
        read.bytes_read,
        shard_bytes
    );
    db.close().await.unwrap();
}

async fn hybrid_search_fuses_the_vector_and_text_rankings(store: Arc<Counted>) {
    let db = open(store).await;
    db.upsert(&corpus(60)).await.unwrap();
    // The vector's nearest is doc000 (distance 0); "cherry" is in a few
    // documents only.
    let mut req = strong(SearchRequest::new(vector_of(0), 5));
    req.text.push(QueryText {
        key: Some("body".into()),
        text: "cherry".into(),
    });
    let vector_only = db
        .search(&strong(SearchRequest::new(vector_of(0), 100)))
        .await
        .unwrap();
    let text_only = db.search(&body_query("cherry", 100)).await.unwrap();
    let resp = db.search(&req).await.unwrap();
    assert_eq!(resp.results.len(), 5);
    let rank = |list: &shoal::api::SearchResponse, id: &str| {
        list.results.iter().position(|h| h.id == id).map(|r| r + 1)
    };
    let mut last = f32::INFINITY;
    for h in &resp.results {
        let s = h.scores.as_ref().expect("scores");
        let fused = s.fused.expect("a hybrid hit has a fused score");
        assert_eq!(h.score, fused);
        assert!(fused <= last, "best first");
        last = fused;
        // The fused score is the sum of 1/(60 + rank) over both lists.
        let want: f64 = [rank(&vector_only, &h.id), rank(&text_only, &h.id)]
            .into_iter()
            .flatten()
            .map(|r| 1.0 / (60.0 + r as f64))
            .sum();
        assert!(
            (f64::from(fused) - want).abs() < 1e-6,
            "{}: {fused} vs {want}",
            h.id
        );
        assert_eq!(
            s.vector_distance.is_some(),
            rank(&vector_only, &h.id).is_some()
        );
        assert_eq!(h.distance, s.vector_distance);
        assert_eq!(!s.bm25.is_empty(), rank(&text_only, &h.id).is_some());
    }
    // A document high in both lists is first.
    let both: Vec<&str> = resp
        .results
        .iter()
        .filter(|h| h.scores.as_ref().unwrap().bm25.len() == 1 && h.distance.is_some())
        .map(|h| h.id.as_str())
        .collect();
    assert!(!both.is_empty(), "{:?}", resp.results);
    // Two text lists without a vector fuse too.
    let mut two = body_query("cherry", 5);
    two.text.push(QueryText {
        key: Some("title".into()),
        text: "doc 7".into(),
    });
    let resp = db.search(&two).await.unwrap();
    assert!(resp
        .results
        .iter()
        .all(|h| h.scores.as_ref().unwrap().fused.is_some()));
    db.close().await.unwrap();
}

#[tokio::test]
async fn bad_text_queries_and_non_text_values_are_refused_with_what_is_wrong() {
    let store = common::memory_store();
    let db = open(store.clone()).await;
    let before = store.counts();
    let refused = |e: shoal::Error| {
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
        e.to_string()
    };
    let e = refused(
        db.search(&SearchRequest::text(Some("nope"), "x", 5))
            .await
            .unwrap_err(),
    );
    assert!(e.contains("\"nope\"") && e.contains("body, title"), "{e}");
    let e = refused(
        db.search(&SearchRequest::text(None, "x", 5))
            .await
            .unwrap_err(),
    );
    assert!(e.contains("name the key"), "{e}");
    let e = refused(db.search(&body_query("   ", 5)).await.unwrap_err());
    assert!(e.contains("1 to 1024 characters"), "{e}");
    let long = "a".repeat(1025);
    refused(db.search(&body_query(&long, 5)).await.unwrap_err());
    let mut twice = body_query("a", 5);
    twice.text.push(QueryText {
        key: Some("body".into()),
        text: "b".into(),
    });
    let e = refused(db.search(&twice).await.unwrap_err());
    assert!(e.contains("twice"), "{e}");
    assert_eq!(store.counts().since(&before).total(), 0, "nothing read");
    // A searchable key holding a number: the batch is refused, nothing written.
    let bad = [
        Record::new("ok", vec![1.0, 2.0, 3.0]).with_metadata(json!({"body": "fine"})),
        Record::new("bad", vec![1.0, 2.0, 3.0]).with_metadata(json!({"body": 42})),
    ];
    let before = store.counts();
    let e = refused(db.upsert(&bad).await.unwrap_err());
    assert!(
        e.contains("\"bad\"") && e.contains("\"body\"") && e.contains("a number"),
        "{e}"
    );
    assert_eq!(store.counts().since(&before).put, 0, "nothing written");
    db.close().await.unwrap();
    // An analyzer that does not exist: the index is not created.
    let empty = common::memory_store();
    let mut opts = OpenOptions::default();
    let mut settings = text_settings();
    settings.text_fields = Some(
        [(
            "body".to_string(),
            TextField {
                analyzer: "klingon".into(),
            },
        )]
        .into(),
    );
    opts.cluster.settings = settings;
    let e = Db::open_store(empty.clone(), opts)
        .await
        .err()
        .expect("refused");
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    assert!(e.to_string().contains("klingon"), "{e}");
    assert!(empty.list("").await.unwrap().is_empty(), "nothing written");
    // An index without text fields says so.
    let plain = common::memory_store();
    let mut opts = OpenOptions::default();
    opts.cluster.settings = RequestedSettings {
        dimensions: Some(3),
        ..Default::default()
    };
    let db = Db::open_store(plain, opts).await.unwrap();
    let e = refused(db.search(&body_query("x", 5)).await.unwrap_err());
    assert!(e.contains("no full-text searchable keys"), "{e}");
    db.close().await.unwrap();
}
