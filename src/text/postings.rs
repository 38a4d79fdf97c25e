//! Inverted indexes of searchable keys over a run of rows (what a routed
//! shard stores per text field, `segment::routed::text`): per term, the
//! rows holding it and how often; per row, its field length. Built from
//! the rows' metadata with the field's analyzer; pure computation.

use std::collections::HashMap;

use rayon::prelude::*;
use serde_json::{Map, Value};

use super::{analyzer, text_of};
use crate::vocab::Analyzer;

/// One searchable key's inverted index over rows `0..lengths.len()`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct FieldPostings {
    /// Rows holding at least one term at the key (BM25's documents,
    /// `bm25::FieldStats`).
    pub docs: u64,
    /// Their field lengths (terms), summed.
    pub total_len: u64,
    /// Per row: its field length (0: no text at the key, or none that
    /// makes a term).
    pub lengths: Vec<u32>,
    /// Every term with its postings (row, term frequency), rows
    /// ascending; terms in byte order.
    pub terms: Vec<(String, Vec<(u32, u32)>)>,
}

/// Rows per piece analyzed on one thread.
const PIECE: usize = 2048;

/// Builds each of `fields`' inverted index over `metadata` (each row's
/// encoded JSON object; empty: none), in parallel over pieces of rows.
pub(crate) fn build(fields: &[(String, Analyzer)], metadata: &[&[u8]]) -> Vec<FieldPostings> {
    if fields.is_empty() {
        return Vec::new();
    }
    // Per piece, per field: lengths and term -> postings of its rows.
    type Field = (Vec<u32>, HashMap<String, Vec<(u32, u32)>>);
    type Piece = Vec<Field>;
    let pieces: Vec<Piece> = metadata
        .par_chunks(PIECE)
        .enumerate()
        .map(|(p, rows)| {
            let mut out: Piece = fields
                .iter()
                .map(|_| (Vec::with_capacity(rows.len()), HashMap::new()))
                .collect();
            let mut tf: HashMap<String, u32> = HashMap::new();
            for (j, bytes) in rows.iter().enumerate() {
                let row = (p * PIECE + j) as u32;
                let map: Option<Map<String, Value>> = if bytes.is_empty() {
                    None
                } else {
                    serde_json::from_slice(bytes).ok()
                };
                for ((key, a), (lengths, terms)) in fields.iter().zip(out.iter_mut()) {
                    let Some(text) = map.as_ref().and_then(|m| m.get(key)).and_then(text_of)
                    else {
                        lengths.push(0);
                        continue;
                    };
                    let mut len = 0u32;
                    analyzer::for_each_term(*a, &text, |t| {
                        len = len.saturating_add(1);
                        match tf.get_mut(t) {
                            Some(n) => *n += 1,
                            None => {
                                tf.insert(t.to_string(), 1);
                            }
                        }
                    });
                    lengths.push(len);
                    for (t, n) in tf.drain() {
                        terms.entry(t).or_default().push((row, n));
                    }
                }
            }
            out
        })
        .collect();
    let mut merged: Vec<Field> = fields
        .iter()
        .map(|_| (Vec::with_capacity(metadata.len()), HashMap::new()))
        .collect();
    for piece in pieces {
        for ((lengths, terms), (l, t)) in merged.iter_mut().zip(piece) {
            lengths.extend(l);
            for (term, mut rows) in t {
                // Pieces come in row order, each piece's rows ascending.
                terms.entry(term).or_default().append(&mut rows);
            }
        }
    }
    merged
        .into_iter()
        .map(|(lengths, terms)| {
            let mut terms: Vec<(String, Vec<(u32, u32)>)> = terms.into_iter().collect();
            terms.par_sort_unstable_by(|a, b| a.0.cmp(&b.0));
            for (_, rows) in &mut terms {
                rows.sort_unstable_by_key(|r| r.0);
            }
            FieldPostings {
                docs: lengths.iter().filter(|l| **l > 0).count() as u64,
                total_len: lengths.iter().map(|l| u64::from(*l)).sum(),
                lengths,
                terms,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postings_count_terms_and_lengths_per_row() {
        let rows: Vec<Vec<u8>> = vec![
            br#"{"t":"Red apples and red pears","n":1}"#.to_vec(),
            Vec::new(),
            br#"{"t":""}"#.to_vec(),
            br#"{"u":"red"}"#.to_vec(),
            br#"{"t":["green apples","red"]}"#.to_vec(),
        ];
        let refs: Vec<&[u8]> = rows.iter().map(Vec::as_slice).collect();
        let fields = vec![("t".to_string(), Analyzer::En), ("u".to_string(), Analyzer::Standard)];
        let built = build(&fields, &refs);
        let t = &built[0];
        // "and" is an English stop word: 4 terms in row 0; row 2 holds an
        // empty text (no term: not a document); rows 1 and 3 hold none.
        assert_eq!(t.lengths, vec![4, 0, 0, 0, 3]);
        assert_eq!((t.docs, t.total_len), (2, 7));
        let get = |f: &FieldPostings, term: &str| {
            f.terms.iter().find(|(x, _)| x == term).map(|(_, p)| p.clone())
        };
        assert_eq!(get(t, "red"), Some(vec![(0, 2), (4, 1)]));
        assert_eq!(get(t, "appl"), Some(vec![(0, 1), (4, 1)]));
        assert_eq!(get(t, "and"), None);
        assert!(t.terms.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(built[1].lengths, vec![0, 0, 0, 1, 0]);
        assert_eq!(get(&built[1], "red"), Some(vec![(3, 1)]));
    }

    #[test]
    fn pieces_keep_rows_ascending() {
        let rows: Vec<Vec<u8>> = (0..5000)
            .map(|i| format!(r#"{{"t":"w{} common"}}"#, i % 7).into_bytes())
            .collect();
        let refs: Vec<&[u8]> = rows.iter().map(Vec::as_slice).collect();
        let built = build(&[("t".to_string(), Analyzer::Standard)], &refs);
        let common = &built[0].terms.iter().find(|(t, _)| t == "common").unwrap().1;
        assert_eq!(common.len(), 5000);
        assert!(common.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(built[0].total_len, 10_000);
    }
}
