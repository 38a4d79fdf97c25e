//! BM25 (Robertson and Zaragoza) in the form Lucene and tantivy score
//! with: for each query term t of a field,
//!
//! ```text
//! idf(t)   = ln(1 + (N - df(t) + 0.5) / (df(t) + 0.5))
//! score    = idf(t) * (k1 + 1) * tf / (tf + k1 * (1 - b + b * len / avg_len))
//! ```
//!
//! where N is the number of documents with the field, df(t) how many of
//! them hold t, tf how often the document holds it, len its field length
//! in terms and avg_len the mean over the N documents. A document's score
//! is the sum over the query's terms (a term named twice counts twice, as
//! a Lucene boolean query of its terms) and over the fields searched.
//! k1 = 1.2 and b = 0.75, the defaults of Lucene, tantivy and
//! Elasticsearch. Arithmetic is in f64; statistics are exact (counted
//! over the documents a query sees), never sampled or quantized.

use std::collections::HashMap;

/// Term-frequency saturation.
pub(crate) const K1: f64 = 1.2;
/// Length normalization.
pub(crate) const B: f64 = 0.75;

/// One field's statistics over a set of documents.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct FieldStats {
    /// Documents with at least one term in the field.
    pub docs: u64,
    /// Their terms, repeats counted.
    pub terms: u64,
}

impl FieldStats {
    pub(crate) fn add(&mut self, other: FieldStats) {
        self.docs += other.docs;
        self.terms += other.terms;
    }

    /// One more document of `len` terms (a document without the field
    /// is not counted).
    pub(crate) fn count(&mut self, len: u32) {
        if len > 0 {
            self.docs += 1;
            self.terms += u64::from(len);
        }
    }

    pub(crate) fn avg_len(&self) -> f64 {
        if self.docs == 0 {
            0.0
        } else {
            self.terms as f64 / self.docs as f64
        }
    }
}

/// The inverse document frequency of a term held by `df` of `docs`.
pub(crate) fn idf(docs: u64, df: u64) -> f64 {
    let (n, df) = (docs as f64, df as f64);
    (1.0 + (n - df + 0.5) / (df + 0.5)).ln()
}

/// One query term's contribution to a document holding it `tf` times in
/// a field of `len` terms.
pub(crate) fn term_score(idf: f64, tf: u32, len: u32, avg_len: f64) -> f64 {
    if tf == 0 {
        return 0.0;
    }
    let tf = f64::from(tf);
    let relative = if avg_len > 0.0 {
        f64::from(len) / avg_len
    } else {
        1.0
    };
    idf * (K1 + 1.0) * tf / (tf + K1 * (1.0 - B + B * relative))
}

/// A query over one field, its statistics settled: each distinct term
/// with its weight (idf times how often the query names it).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct FieldQuery {
    pub weights: Vec<(String, f64)>,
    pub avg_len: f64,
}

impl FieldQuery {
    /// `terms` as the analyzer gave them; `df` counts each distinct term's
    /// documents among the `stats.docs` documents with the field.
    pub(crate) fn new(terms: &[String], stats: FieldStats, df: &HashMap<String, u64>) -> Self {
        let mut weights: Vec<(String, f64)> = Vec::new();
        for term in terms {
            let w = idf(stats.docs, df.get(term).copied().unwrap_or(0));
            match weights.iter_mut().find(|(t, _)| t == term) {
                Some((_, sum)) => *sum += w,
                None => weights.push((term.clone(), w)),
            }
        }
        FieldQuery {
            weights,
            avg_len: stats.avg_len(),
        }
    }

    /// The document's score in this field: `tf(term)` how often it holds
    /// a term, `len` its field length.
    pub(crate) fn score(&self, len: u32, tf: impl Fn(&str) -> u32) -> f64 {
        self.weights
            .iter()
            .map(|(term, w)| term_score(*w, tf(term), len, self.avg_len))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idf_falls_as_a_term_gets_common_and_stays_positive() {
        assert!(idf(100, 1) > idf(100, 10));
        assert!(idf(100, 10) > idf(100, 100));
        assert!(idf(100, 100) > 0.0);
        // ln(1 + (10 - 2 + 0.5) / 2.5) = ln(4.4)
        assert!((idf(10, 2) - 4.4f64.ln()).abs() < 1e-12);
    }

    #[test]
    fn term_score_matches_the_formula_by_hand() {
        // idf 2, tf 3, len 10, avg 5: 2 * 2.2 * 3 / (3 + 1.2 * (0.25 + 1.5))
        let want = 2.0 * 2.2 * 3.0 / (3.0 + 1.2 * (0.25 + 0.75 * 2.0));
        assert!((term_score(2.0, 3, 10, 5.0) - want).abs() < 1e-12);
        assert_eq!(term_score(2.0, 0, 10, 5.0), 0.0);
        // More occurrences score more, with saturation; longer fields less.
        assert!(term_score(1.0, 2, 10, 10.0) > term_score(1.0, 1, 10, 10.0));
        assert!(term_score(1.0, 2, 10, 10.0) < 2.0 * term_score(1.0, 1, 10, 10.0));
        assert!(term_score(1.0, 1, 20, 10.0) < term_score(1.0, 1, 10, 10.0));
    }

    #[test]
    fn a_term_named_twice_weighs_twice() {
        let stats = FieldStats {
            docs: 10,
            terms: 50,
        };
        let df = HashMap::from([("a".to_string(), 2), ("b".to_string(), 5)]);
        let once = FieldQuery::new(&["a".into(), "b".into()], stats, &df);
        let twice = FieldQuery::new(&["a".into(), "b".into(), "a".into()], stats, &df);
        let tf = |t: &str| u32::from(t == "a");
        assert!((twice.score(5, tf) - 2.0 * once.score(5, tf)).abs() < 1e-12);
        assert_eq!(once.score(5, |_| 0), 0.0);
    }
}
