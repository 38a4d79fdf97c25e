//! The shard index without any store: build a shard in memory, hand the
//! search exactly the parts it names, and check what it decides.

use rand::{Rng, SeedableRng};

use super::*;
use crate::index::rabitq::ListCodes;
use crate::index::{distance, ScanStats};
use crate::record::Prepared;
use crate::segment::shard::decode_head_region;
use crate::segment::{SegmentHeader, Shape, FORMAT_VERSION};
use crate::vocab::Metric;

const D: usize = 16;

/// A shard of `n` clustered rows, its routing and every list's codes and rows.
fn shard(n: usize, seed: u64) -> (ShardRouting, Vec<String>, Vec<ListCodes>, Vec<Vec<f32>>) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let centers: Vec<Vec<f32>> = (0..8)
        .map(|_| (0..D).map(|_| rng.random_range(-4.0..4.0)).collect())
        .collect();
    let rows: Vec<Prepared> = (0..n)
        .map(|i| Prepared {
            id: format!("r{i:04}"),
            vector: centers[i % 8]
                .iter()
                .map(|c| c + rng.random_range(-1.0..1.0))
                .collect(),
            metadata: Vec::new(),
            tombstone: false,
        })
        .collect();
    let shape = Shape {
        dimensions: D,
        metric: Metric::Euclidean,
    };
    let header = SegmentHeader {
        format_version: FORMAT_VERSION,
        dimensions: D as u32,
        metric: Metric::Euclidean,
        record_count: 0,
        created_at_ms: 0,
        writer_id: "test".into(),
        has_index: false,
    };
    let built = build(rows, shape, Some(8), usize::MAX, &header);
    assert_eq!(built.len(), 1, "one shard under the cap");
    let bytes = &built[0].bytes;
    let (head, ids) = decode_head_region("k", bytes, bytes.len() as u64).unwrap();
    let mut codes = Vec::new();
    let mut vectors = Vec::new();
    for (l, e) in head.lists.iter().enumerate() {
        let c = &bytes[e.codes.range().start as usize..e.codes.range().end as usize];
        codes.push(ListCodes::from_bytes(c, D, e.rows as usize).unwrap());
        let r = head.rows_range(l, 0, e.rows);
        vectors.push(
            head.list_rows("k", l, 0, &bytes[r.start as usize..r.end as usize])
                .unwrap(),
        );
    }
    (ShardRouting::new(head), ids.ids, codes, vectors)
}

fn exact_top(routing: &ShardRouting, vectors: &[Vec<f32>], q: &[f32], k: usize) -> Vec<u32> {
    let mut all: Vec<(f32, u32)> = Vec::new();
    for (l, rows) in vectors.iter().enumerate() {
        for (i, v) in rows.chunks_exact(D).enumerate() {
            all.push((
                distance(Metric::Euclidean, q, v),
                routing.row_of(l as u32, i as u32),
            ));
        }
    }
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    all.into_iter().take(k).map(|(_, r)| r).collect()
}

/// Exact: every list probed, every allowed row a candidate, the rerank
/// returns the true top k; rows `keep` refuses never come back.
#[test]
fn an_exact_search_over_given_parts_finds_the_true_top_k_and_respects_keep() {
    let (routing, ids, codes, vectors) = shard(800, 7);
    let q: Vec<f32> = vectors[3][..D].to_vec();
    let query = ShardQuery {
        metric: Metric::Euclidean,
        k: 10,
        probes: 1,
        exact: true,
        vector: &q,
    };
    let search = ShardSearch::new(&routing, query);
    assert_eq!(search.lists().len(), 8, "exact probes every list");
    let mut stats = ScanStats::default();
    let cands = search.estimate(|l| &codes[l as usize], |_, _| true, &mut stats);
    assert_eq!(cands.len(), 800, "exact keeps every allowed row");
    let row = |l: u32, i: u32| &vectors[l as usize][i as usize * D..(i as usize + 1) * D];
    let best = search.rerank(&cands, row, |r| ids[r as usize].as_str(), &mut stats);
    let got: Vec<u32> = best.iter().map(|&(_, l, i)| routing.row_of(l, i)).collect();
    assert_eq!(got, exact_top(&routing, &vectors, &q, 10));
    // The nearest row (the query itself) refused: it never comes back.
    let banned = got[0];
    let cands = search.estimate(
        |l| &codes[l as usize],
        |l, i| routing.row_of(l, i as u32) != banned,
        &mut stats,
    );
    let best = search.rerank(&cands, row, |r| ids[r as usize].as_str(), &mut stats);
    assert!(best.iter().all(|&(_, l, i)| routing.row_of(l, i) != banned));
    assert_eq!(best.len(), 10);
}

/// Approximate: the plan probes the nearest lists only, the estimates
/// rule most rows out, and the rerank still finds the true neighbours.
#[test]
fn an_approximate_search_plans_few_lists_and_keeps_the_neighbours() {
    let (routing, ids, codes, vectors) = shard(2000, 9);
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let (mut found, mut total) = (0, 0);
    for _ in 0..20 {
        let l = rng.random_range(0..vectors.len());
        let q: Vec<f32> = vectors[l][..D].iter().map(|x| x + 0.1).collect();
        let query = ShardQuery {
            metric: Metric::Euclidean,
            k: 10,
            probes: 3,
            exact: false,
            vector: &q,
        };
        let search = ShardSearch::new(&routing, query);
        assert_eq!(search.lists().len(), 3);
        let mut stats = ScanStats::default();
        let cands = search.estimate(|l| &codes[l as usize], |_, _| true, &mut stats);
        assert!(cands.len() <= rerank_count(10));
        let row = |l: u32, i: u32| &vectors[l as usize][i as usize * D..(i as usize + 1) * D];
        let best = search.rerank(&cands, row, |r| ids[r as usize].as_str(), &mut stats);
        let truth = exact_top(&routing, &vectors, &q, 10);
        found += best
            .iter()
            .filter(|&&(_, l, i)| truth.contains(&routing.row_of(l, i)))
            .count();
        total += 10;
    }
    assert!(found * 10 >= total * 9, "recall {found}/{total}");
}

/// The filter policy widens the plan: a filter keeping a quarter of the
/// probed rows probes four times the lists; one keeping almost nothing
/// (or fewer rows than k) reads every list.
#[test]
fn a_filter_widens_the_probes_by_the_shared_policy() {
    let (routing, _, _, _) = shard(800, 3);
    let q = vec![0.0; D];
    let query = ShardQuery {
        metric: Metric::Euclidean,
        k: 10,
        probes: 1,
        exact: false,
        vector: &q,
    };
    let mut s = ShardSearch::new(&routing, query);
    assert_eq!(s.lists().len(), 1);
    assert!(s.widen(100, 25), "a quarter matching widens");
    assert_eq!(s.lists().len(), 4);
    assert!(!s.widen(400, 400), "everything matching: no wider");
    let mut s = ShardSearch::new(&routing, query);
    assert!(s.can_widen());
    assert!(s.widen(100, 1), "selective: every list");
    assert_eq!(s.lists().len(), 8);
    assert!(!s.can_widen(), "every list probed: nothing to count");
    assert!(!s.widen(800, 1), "nothing left to widen");
}
