//! Full-text queries over the search units: what a unit is asked
//! ([`TextQuery`]), what it answers ([`TextSearched`]: its statistics
//! and its matching documents), and the merge that scores them with
//! BM25 over statistics summed across every unit, so a score never
//! depends on how rows happen to be spread over tails and shards.
//!
//! A unit counts every document it may return (live, not hidden by a
//! newer tail record, not of a partition left out) into the statistics,
//! whatever the filter; it returns only the documents that pass the
//! filter and hold at least one query term. Deleted and superseded rows
//! are never counted and never match.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Map, Value};

use super::unit::Source;
use crate::filter::Filter;
use crate::segment::Segment;
use crate::text::analyzer;
use crate::text::bm25::{FieldQuery, FieldStats};
use crate::vocab::Analyzer;

/// One ranked list of a text query: a searchable key and the query's
/// terms under its analyzer.
#[derive(Clone, Debug)]
pub(super) struct TextList {
    pub key: String,
    pub analyzer: Analyzer,
    /// The query's terms in order, repeats kept (they weigh twice).
    pub terms: Vec<String>,
    /// The distinct terms, the order of every `df` and `tf` vector.
    pub distinct: Vec<String>,
}

impl TextList {
    pub(super) fn new(key: &str, analyzer: Analyzer, text: &str) -> TextList {
        let terms = analyzer::terms(analyzer, text);
        let mut distinct = terms.clone();
        distinct.sort();
        distinct.dedup();
        TextList {
            key: key.to_string(),
            analyzer,
            terms,
            distinct,
        }
    }
}

/// What every unit of a text query is asked.
pub(super) struct TextQuery {
    pub lists: Vec<TextList>,
    pub filter: Option<Filter>,
    pub partitions: u32,
    pub allow_partial: bool,
}

/// One list's statistics in one unit.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct ListStats {
    pub field: FieldStats,
    /// Per distinct term, the documents holding it.
    pub df: Vec<u64>,
}

/// A document holding at least one term of some list: per list, its
/// field length and how often it holds each distinct term (`None` where
/// it holds none of that list's terms).
pub(super) struct TextDoc {
    pub id: String,
    pub partition: u32,
    pub source: Source,
    pub lists: DocLists,
}

/// Per list of a query, a document's field length and how often it holds
/// each distinct term (`None`: none of that list's terms).
pub(super) type DocLists = Vec<Option<(u32, Vec<u32>)>>;

/// What one unit found.
#[derive(Default)]
pub(super) struct TextSearched {
    pub stats: Vec<ListStats>,
    pub docs: Vec<TextDoc>,
    /// Shards this unit read.
    pub shards: u64,
    /// Shards a partial result left out.
    pub failed_shards: Vec<super::ShardFailure>,
}

impl TextSearched {
    pub(super) fn new(q: &TextQuery) -> TextSearched {
        TextSearched {
            stats: q
                .lists
                .iter()
                .map(|l| ListStats {
                    field: FieldStats::default(),
                    df: vec![0; l.distinct.len()],
                })
                .collect(),
            docs: Vec::new(),
            shards: 0,
            failed_shards: Vec::new(),
        }
    }

    /// Adds what another pass over the same query found.
    pub(super) fn merge(&mut self, other: TextSearched) {
        for (a, b) in self.stats.iter_mut().zip(other.stats) {
            a.field.add(b.field);
            for (x, y) in a.df.iter_mut().zip(b.df) {
                *x += y;
            }
        }
        self.docs.extend(other.docs);
        self.shards += other.shards;
        self.failed_shards.extend(other.failed_shards);
    }

    /// Counts one document the unit may return and, when it passes the
    /// filter and holds a query term, keeps it (`source()` says where it
    /// is; called only then).
    pub(super) fn observe(
        &mut self,
        q: &TextQuery,
        id: &str,
        metadata: Option<&Map<String, Value>>,
        source: impl FnOnce() -> Source,
    ) {
        let mut lists = Vec::with_capacity(q.lists.len());
        let mut any = false;
        for (l, stats) in q.lists.iter().zip(&mut self.stats) {
            let text = metadata
                .and_then(|m| m.get(&l.key))
                .and_then(crate::text::text_of);
            let Some(text) = text else {
                lists.push(None);
                continue;
            };
            let (mut len, mut tf) = (0u32, vec![0u32; l.distinct.len()]);
            analyzer::for_each_term(l.analyzer, &text, |t| {
                len = len.saturating_add(1);
                if let Ok(j) = l.distinct.binary_search_by(|x| x.as_str().cmp(t)) {
                    tf[j] += 1;
                }
            });
            stats.field.count(len);
            let mut holds = false;
            for (df, &n) in stats.df.iter_mut().zip(&tf) {
                if n > 0 {
                    *df += 1;
                    holds = true;
                }
            }
            any |= holds;
            lists.push(holds.then_some((len, tf)));
        }
        if any
            && q.filter
                .as_ref()
                .is_none_or(|f| f.matches(metadata.unwrap_or(&EMPTY)))
        {
            self.docs.push(TextDoc {
                id: id.to_string(),
                partition: crate::coord::partition_of(id, q.partitions),
                source: source(),
                lists,
            });
        }
    }
}

static EMPTY: std::sync::LazyLock<Map<String, Value>> = std::sync::LazyLock::new(Map::new);

/// One document of a scored list: its BM25 score in that list.
pub(super) struct Scored {
    pub score: f64,
    pub doc: usize,
}

/// Every unit's documents scored with statistics summed over the units,
/// each list cut to its best `depth` by score (and every document tied
/// with the last): what [`Ranking::finish`] orders by id once the kept
/// documents found by a text index have ids ([`Ranking::pending`]).
pub(super) struct Ranking {
    pub docs: Vec<TextDoc>,
    lists: Vec<Vec<Scored>>,
}

/// Scores every unit's documents (see [`Ranking`]).
pub(super) fn score(q: &TextQuery, units: Vec<TextSearched>, depth: usize) -> Ranking {
    let mut totals: Vec<ListStats> = TextSearched::new(q).stats;
    let mut docs = Vec::new();
    for u in units {
        for (t, s) in totals.iter_mut().zip(&u.stats) {
            t.field.add(s.field);
            for (a, b) in t.df.iter_mut().zip(&s.df) {
                *a += b;
            }
        }
        docs.extend(u.docs);
    }
    let lists = q
        .lists
        .iter()
        .zip(&totals)
        .enumerate()
        .map(|(l, (list, stats))| {
            let df: HashMap<String, u64> = list
                .distinct
                .iter()
                .cloned()
                .zip(stats.df.iter().copied())
                .collect();
            let fq = FieldQuery::new(&list.terms, stats.field, &df);
            let mut ranked: Vec<Scored> = docs
                .iter()
                .enumerate()
                .filter_map(|(i, d): (usize, &TextDoc)| {
                    let (len, tf) = d.lists[l].as_ref()?;
                    let score = fq.score(*len, |t| {
                        list.distinct
                            .binary_search_by(|x| x.as_str().cmp(t))
                            .map_or(0, |j| tf[j])
                    });
                    Some(Scored { score, doc: i })
                })
                .collect();
            ranked.sort_unstable_by(|a, b| b.score.total_cmp(&a.score));
            if let Some(bar) = ranked.get(depth.max(1) - 1).map(|s| s.score) {
                let keep = ranked.partition_point(|s| s.score.total_cmp(&bar).is_ge());
                ranked.truncate(keep);
            }
            ranked
        })
        .collect();
    Ranking { docs, lists }
}

impl Ranking {
    /// The documents a list keeps that are known by shard row only.
    pub(super) fn pending(&self) -> Vec<usize> {
        let mut out: Vec<usize> = self
            .lists
            .iter()
            .flatten()
            .map(|s| s.doc)
            .filter(|&d| matches!(self.docs[d].source, Source::Pending { .. }))
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// The documents and, per list, its best `depth` (ties by id).
    pub(super) fn finish(self, depth: usize) -> (Vec<TextDoc>, Vec<Vec<Scored>>) {
        let Ranking { docs, mut lists } = self;
        for ranked in &mut lists {
            ranked.sort_by(|a, b| {
                b.score
                    .total_cmp(&a.score)
                    .then_with(|| docs[a.doc].id.cmp(&docs[b.doc].id))
            });
            ranked.truncate(depth);
        }
        (docs, lists)
    }
}

/// Observes every row of an in-memory segment that `allowed` lets a
/// query return.
pub(super) fn observe_segment(
    out: &mut TextSearched,
    q: &TextQuery,
    segment: &Arc<Segment>,
    allowed: impl Fn(usize) -> bool,
) {
    let maps = segment.metadata_maps();
    for (i, id) in segment.ids().iter().enumerate() {
        if allowed(i) {
            out.observe(q, id, maps.get(i), || Source::Segment {
                segment: segment.clone(),
                position: i,
            });
        }
    }
}
