//! Reciprocal Rank Fusion (Cormack, Clarke and Büttcher, SIGIR 2009):
//! several rankings of the same documents become one, each document
//! scoring `sum over the rankings that hold it of 1 / (K + rank)`, rank
//! counted from 1. Scores of different kinds (distances, BM25) never
//! meet, only ranks do, so no list needs calibrating against another.

use std::collections::HashMap;
use std::hash::Hash;

/// The constant of the original paper, which Elasticsearch, OpenSearch
/// and LanceDB use too: it damps the weight of the very first ranks.
pub(crate) const K: f64 = 60.0;

/// One document of a fused ranking.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Fused<D> {
    pub doc: D,
    pub score: f64,
    /// Per input list, the document's rank there (from 1), if any.
    pub ranks: Vec<Option<usize>>,
}

/// Fuses `lists` (each best first, no document twice in one list) into
/// one ranking, best first. Ties go to the document ranked best in any
/// list, then to the one met first.
pub(crate) fn rrf<D: Clone + Eq + Hash>(lists: &[Vec<D>]) -> Vec<Fused<D>> {
    let mut at: HashMap<D, usize> = HashMap::new();
    let mut out: Vec<Fused<D>> = Vec::new();
    for (l, list) in lists.iter().enumerate() {
        for (r, doc) in list.iter().enumerate() {
            let i = *at.entry(doc.clone()).or_insert_with(|| {
                out.push(Fused {
                    doc: doc.clone(),
                    score: 0.0,
                    ranks: vec![None; lists.len()],
                });
                out.len() - 1
            });
            out[i].score += 1.0 / (K + (r + 1) as f64);
            out[i].ranks[l] = Some(r + 1);
        }
    }
    let best_rank = |f: &Fused<D>| f.ranks.iter().flatten().min().copied();
    // A stable sort keeps the first met ahead among exact ties.
    out.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then_with(|| best_rank(a).cmp(&best_rank(b)))
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_document_high_in_both_lists_wins() {
        let vector = vec!["a", "b", "c"];
        let text = vec!["c", "a", "d"];
        let fused = rrf(&[vector, text]);
        let order: Vec<&str> = fused.iter().map(|f| f.doc).collect();
        // a: 1/61 + 1/62; c: 1/63 + 1/61; b: 1/62; d: 1/63.
        assert_eq!(order, ["a", "c", "b", "d"]);
        assert!((fused[0].score - (1.0 / 61.0 + 1.0 / 62.0)).abs() < 1e-12);
        assert_eq!(fused[0].ranks, [Some(1), Some(2)]);
        assert_eq!(fused[3].ranks, [None, Some(3)]);
    }

    #[test]
    fn one_list_keeps_its_order() {
        let fused = rrf(&[vec![3, 1, 2]]);
        assert_eq!(fused.iter().map(|f| f.doc).collect::<Vec<_>>(), [3, 1, 2]);
        assert!(rrf::<u8>(&[vec![], vec![]]).is_empty());
    }

    #[test]
    fn close_scores_keep_their_order_and_exact_ties_go_to_the_first_met() {
        // x: ranks 1 and 3 (1/61 + 1/63) just beats y: 2 and 2 (2/62);
        // w (rank 1 of one list) beats z (rank 3 of one list).
        let fused = rrf(&[vec!["x", "y", "z"], vec!["w", "y", "x"]]);
        let order: Vec<&str> = fused.iter().map(|f| f.doc).collect();
        assert_eq!(order, ["x", "y", "w", "z"]);
        // p and q tie exactly (rank 1 of one list each): p was met first.
        let fused = rrf(&[vec!["p"], vec!["q"]]);
        assert_eq!(fused.iter().map(|f| f.doc).collect::<Vec<_>>(), ["p", "q"]);
    }
}
