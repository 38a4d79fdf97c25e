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

type Parts = (ShardRouting, Vec<String>, Vec<ListCodes>, Vec<Vec<f32>>);

/// A shard of `n` clustered rows, its routing and every list's codes and
/// rows, with the code bits the dimension gets.
fn shard(n: usize, seed: u64) -> Parts {
    shard_as(n, seed, None)
}

/// [`shard`] with `bits` bits per dimension, and, for `Some(1)`, written
/// as the version-1 format (one-bit codes, no code bits in the head) that
/// shards had before multi-bit codes.
fn shard_as(n: usize, seed: u64, bits: Option<u8>) -> Parts {
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
    let built = match bits {
        None => build(rows, shape, Some(8), usize::MAX, &header),
        Some(b) => build_with_bits(rows, shape, Some(8), usize::MAX, &header, b),
    };
    assert_eq!(built.len(), 1, "one shard under the cap");
    let mut bytes = built[0].bytes.to_vec();
    if bits == Some(1) {
        as_version_one(&mut bytes);
    }
    let bytes = &bytes;
    let (head, ids) = decode_head_region("k", bytes, bytes.len() as u64).unwrap();
    let mut codes = Vec::new();
    let mut vectors = Vec::new();
    for (l, e) in head.lists.iter().enumerate() {
        let c = &bytes[e.codes.range().start as usize..e.codes.range().end as usize];
        codes.push(ListCodes::from_bytes(c, D, e.rows as usize, head.code_bits).unwrap());
        let r = head.rows_range(l, 0, e.rows);
        vectors.push(
            head.list_rows("k", l, 0, &bytes[r.start as usize..r.end as usize])
                .unwrap(),
        );
    }
    (ShardRouting::new(head), ids.ids, codes, vectors)
}

/// Rewrites a one-bit shard as version 1 wrote it: the same layout with
/// version 1 in the prefix and the head's code-bits byte reserved (0).
fn as_version_one(bytes: &mut [u8]) {
    use crate::segment::shard::{PREFIX_LEN, SHARD_VERSION_ONE_BIT};
    let head_len = u64::from_le_bytes(bytes[16..24].try_into().unwrap()) as usize;
    bytes[8..10].copy_from_slice(&SHARD_VERSION_ONE_BIT.to_le_bytes());
    // dimensions u32, metric u8, then the code-bits byte.
    assert_eq!(bytes[PREFIX_LEN + 5], 1, "a one-bit shard");
    bytes[PREFIX_LEN + 5] = 0;
    let sum = xxhash_rust::xxh3::xxh3_64(&bytes[PREFIX_LEN..PREFIX_LEN + head_len]);
    bytes[24..32].copy_from_slice(&sum.to_le_bytes());
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
    assert_eq!(
        (stats.rerank_candidates, stats.rows_reranked),
        (800, 800),
        "exact reranks every row"
    );
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
    let (mut candidates, mut reranked) = (0, 0);
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
        // Every candidate's interval reaches the k-th best upper bound,
        // nearest lower bound first, and they are few of the probed rows.
        let mut uppers: Vec<f32> = cands.iter().map(|c| c.upper).collect();
        uppers.sort_by(f32::total_cmp);
        assert!(cands.iter().all(|c| c.lower <= uppers[9]));
        assert!(cands.windows(2).all(|w| w[0].lower <= w[1].lower));
        assert!((cands.len() as u64) * 4 < stats.codes_scanned);
        let row = |l: u32, i: u32| &vectors[l as usize][i as usize * D..(i as usize + 1) * D];
        let best = search.rerank(&cands, row, |r| ids[r as usize].as_str(), &mut stats);
        assert_eq!(stats.rerank_candidates, cands.len() as u64);
        candidates += stats.rerank_candidates;
        reranked += stats.rows_reranked;
        let truth = exact_top(&routing, &vectors, &q, 10);
        found += best
            .iter()
            .filter(|&&(_, l, i)| truth.contains(&routing.row_of(l, i)))
            .count();
        total += 10;
    }
    assert!(found * 10 >= total * 9, "recall {found}/{total}");
    // The rerank stops once no candidate left can enter the top k.
    assert!(reranked < candidates, "{reranked} of {candidates} reranked");
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

/// Shards written before multi-bit codes (version 1, one-bit codes) still
/// parse and answer, exactly and approximately; new shards record their
/// code bits, and a code-bits byte out of range is refused.
#[test]
fn a_version_one_shard_still_answers() {
    let (routing, ids, codes, vectors) = shard_as(2000, 9, Some(1));
    assert_eq!(routing.head.code_bits, 1);
    let mut rng = rand::rngs::StdRng::seed_from_u64(2);
    let (mut found, mut total) = (0, 0);
    for round in 0..20 {
        let l = rng.random_range(0..vectors.len());
        let q: Vec<f32> = vectors[l][..D].iter().map(|x| x + 0.1).collect();
        let query = ShardQuery {
            metric: Metric::Euclidean,
            k: 10,
            probes: 3,
            exact: round % 2 == 0,
            vector: &q,
        };
        let search = ShardSearch::new(&routing, query);
        let mut stats = ScanStats::default();
        let cands = search.estimate(|l| &codes[l as usize], |_, _| true, &mut stats);
        let row = |l: u32, i: u32| &vectors[l as usize][i as usize * D..(i as usize + 1) * D];
        let best = search.rerank(&cands, row, |r| ids[r as usize].as_str(), &mut stats);
        let got: Vec<u32> = best.iter().map(|&(_, l, i)| routing.row_of(l, i)).collect();
        let truth = exact_top(&routing, &vectors, &q, 10);
        if query.exact {
            assert_eq!(got, truth);
        }
        found += got.iter().filter(|r| truth.contains(r)).count();
        total += 10;
    }
    assert!(found * 10 >= total * 9, "recall {found}/{total}");

    // A new shard says how many bits its codes have.
    let (routing, ..) = shard(300, 4);
    assert_eq!(
        routing.head.code_bits,
        crate::index::rabitq::ex::code_bits(D)
    );
    assert!(routing.head.code_bits > 1, "{D}-d codes get more than one bit");
    for bad in [0u8, 9] {
        let rows: Vec<Prepared> = (0..50)
            .map(|i| Prepared {
                id: format!("r{i}"),
                vector: vec![i as f32; D],
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
        let mut bytes = build(rows, shape, Some(2), usize::MAX, &header)[0]
            .bytes
            .to_vec();
        use crate::segment::shard::PREFIX_LEN;
        let head_len = u64::from_le_bytes(bytes[16..24].try_into().unwrap()) as usize;
        bytes[PREFIX_LEN + 5] = bad;
        let sum = xxhash_rust::xxh3::xxh3_64(&bytes[PREFIX_LEN..PREFIX_LEN + head_len]);
        bytes[24..32].copy_from_slice(&sum.to_le_bytes());
        let err = decode_head_region("k", &bytes, bytes.len() as u64).unwrap_err();
        assert!(err.to_string().contains("bits per dimension"), "{err}");
    }
}
