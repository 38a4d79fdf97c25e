//! Searching one shard, sans I/O: plan the lists to probe, estimate from
//! the code blocks the caller fetched, rerank the rows it fetched.
//!
//! A search probes the lists nearest the query (by centroid), estimates
//! every allowed row of them from its code, keeps every row whose lower
//! bound beats the `k`-th best upper bound (no fixed count: how many is
//! up to the codes' error bounds, which the code bits keep tight) and
//! reranks those with full precision, nearest lower bound first, until
//! the next lower bound cannot beat the `k`-th best exact distance. A
//! filter follows the shared filter policy ([`crate::index::route`]):
//! its selectivity among the probed rows widens the probes, or, when
//! selective, every list is read and every matching row reranked, so a
//! query asking for k gets k when k rows match.

use std::sync::Arc;

use crate::index::ivf::probe_metric;
use crate::index::rabitq::{ListCodes, ListQuery, Rotation};
use crate::index::{distance, dot, route, KthBest, QueryParams, Route, ScanStats};
use crate::segment::shard::ShardHead;
use crate::vocab::Metric;

/// What a reader holds of a shard's index for as long as the shard is
/// listed: its head (centroids, list table) and the centroids rotated
/// for the codes.
pub(crate) struct ShardRouting {
    pub head: ShardHead,
    rotated: Vec<f32>,
    rotation: Arc<Rotation>,
}

impl ShardRouting {
    /// Prepares a parsed head for searching (CPU: rotates every centroid).
    pub(crate) fn new(head: ShardHead) -> Self {
        let rotation = Arc::new(Rotation::new(head.dimensions));
        let mut rotated = head.centroids.clone();
        for c in rotated.chunks_exact_mut(head.dimensions.max(1)) {
            rotation.apply(c);
        }
        ShardRouting {
            head,
            rotated,
            rotation,
        }
    }

    /// Bytes held (centroids twice, the list table).
    pub(crate) fn memory_bytes(&self) -> usize {
        self.head.centroids.len() * 8 + self.head.lists.len() * 96
    }

    /// The shard row of list `list`'s `i`-th row.
    pub(crate) fn row_of(&self, list: u32, i: u32) -> u32 {
        self.head.lists[list as usize].start as u32 + i
    }

    /// The list holding shard row `row`, and the row's place in it.
    pub(crate) fn list_of(&self, row: u32) -> (u32, u32) {
        let l = self.head.list_of(u64::from(row));
        (l as u32, row - self.head.lists[l].start as u32)
    }

    /// The lists nearest the query first (by centroid).
    fn probe_order(&self, metric: Metric, query: &[f32]) -> Vec<u32> {
        let pm = probe_metric(metric);
        let mut order: Vec<(f32, u32)> = (0..self.head.nlist())
            .map(|l| (distance(pm, query, self.head.centroid(l)), l as u32))
            .collect();
        order.sort_by(|a, b| a.0.total_cmp(&b.0));
        order.into_iter().map(|(_, l)| l).collect()
    }
}

/// What a query asks of one shard.
#[derive(Clone, Copy)]
pub(crate) struct ShardQuery<'a> {
    pub metric: Metric,
    pub k: usize,
    /// Lists to probe (all of them for `exact`).
    pub probes: usize,
    pub exact: bool,
    pub vector: &'a [f32],
}

/// A row the code estimates could not rule out: its bounds, and where it
/// is (list, index in the list).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Candidate {
    pub lower: f32,
    /// Read by tests: the bound the candidate was kept against.
    #[allow(dead_code)]
    pub upper: f32,
    pub list: u32,
    pub i: u32,
}

/// One query's search of one shard.
pub(crate) struct ShardSearch<'a> {
    shard: &'a ShardRouting,
    q: ShardQuery<'a>,
    /// Every list, nearest first.
    order: Vec<u32>,
    /// How many of `order` are probed.
    probed: usize,
    exact: bool,
}

impl<'a> ShardSearch<'a> {
    /// Plans the first probes.
    pub(crate) fn new(shard: &'a ShardRouting, q: ShardQuery<'a>) -> Self {
        let order = shard.probe_order(q.metric, q.vector);
        let nlist = order.len();
        let probed = if q.exact {
            nlist
        } else {
            q.probes.clamp(1, nlist.max(1)).min(nlist)
        };
        ShardSearch {
            shard,
            q,
            order,
            probed,
            exact: q.exact,
        }
    }

    /// The lists probed so far: their codes (and, to filter, their
    /// metadata) are what [`ShardSearch::estimate`] needs.
    pub(crate) fn lists(&self) -> &[u32] {
        &self.order[..self.probed]
    }

    /// Whether any list is left unprobed (a filter's count could widen
    /// the probes); when every list is probed there is nothing to count.
    pub(crate) fn can_widen(&self) -> bool {
        self.probed < self.order.len()
    }

    /// Widens the probes after a filter's count over the probed lists
    /// (`live` allowed rows, `matching` of them passing the filter), by
    /// the shared filter policy. Returns true when more lists are now
    /// probed (fetch their parts and count again).
    pub(crate) fn widen(&mut self, live: usize, matching: usize) -> bool {
        let nlist = self.order.len();
        if self.probed == nlist {
            return false;
        }
        let selectivity = matching as f64 / live.max(1) as f64;
        let params = QueryParams {
            metric: self.q.metric,
            k: self.q.k,
            nprobe: self.probed,
            exact: self.exact,
        };
        let widened = match route(&params, selectivity) {
            Route::Exact => {
                self.exact = true;
                nlist
            }
            Route::Ann(p) if matching < self.q.k => p.nprobe.max(nlist),
            Route::Ann(p) => p.nprobe,
        };
        if widened <= self.probed {
            return false;
        }
        self.probed = widened.min(nlist);
        true
    }

    /// Estimates every row of the probed lists that `keep(list, i)`
    /// allows from its code (`codes(list)` gives the list's code block)
    /// and returns the candidates to rerank: every one whose lower bound
    /// can beat the `k`-th best upper bound (every allowed row when
    /// exact), by lower bound. Candidates are a subset of the probed rows,
    /// so the probes bound their number; a fixed cap would drop rows the
    /// bounds say may be neighbours, which is where recall went on data
    /// whose neighbours sit at nearly equal distances.
    pub(crate) fn estimate<'c>(
        &self,
        codes: impl Fn(u32) -> &'c ListCodes,
        keep: impl Fn(u32, usize) -> bool,
        stats: &mut ScanStats,
    ) -> Vec<Candidate> {
        if self.exact {
            return every_row(self.lists().iter().map(|&l| (l, codes(l))), keep, stats);
        }
        let shard = self.shard;
        let d = shard.head.dimensions;
        let lists = self.lists().iter().map(|&l| ProbedList {
            list: l,
            codes: codes(l),
            rotated: &shard.rotated[l as usize * d..(l as usize + 1) * d],
            centroid: shard.head.centroid(l as usize),
        });
        estimate_lists(&self.q, &shard.rotation, lists, keep, stats)
    }

    /// The candidates reranked ([`rerank_lists`]), ties broken by
    /// `id(shard row)`.
    pub(crate) fn rerank<'r>(
        &self,
        cands: &[Candidate],
        row: impl Fn(u32, u32) -> &'r [f32],
        id: impl Fn(u32) -> &'r str,
        stats: &mut ScanStats,
    ) -> Vec<(f32, u32, u32)> {
        let row_of = |l: u32, i: u32| self.shard.row_of(l, i);
        rerank_lists(&self.q, self.exact, cands, row, |l, i| id(row_of(l, i)), stats)
    }
}

/// One probed list as [`estimate_lists`] sees it: its codes and the
/// centroid they were taken against (as is and rotated).
pub(crate) struct ProbedList<'c> {
    pub list: u32,
    pub codes: &'c ListCodes,
    pub rotated: &'c [f32],
    pub centroid: &'c [f32],
}

/// Estimates every row of `lists` that `keep(list, i)` allows from its
/// code and returns the candidates to rerank: every one whose lower
/// bound can beat the `k`-th best upper bound, by lower bound. A list no
/// row of which can beat the bar is skipped (its bound is exact, so this
/// never costs recall). Shared by a shard's own lists and the clusters
/// of the index's routing (`reader::routed`).
pub(crate) fn estimate_lists<'c>(
    q: &ShardQuery<'_>,
    rotation: &Rotation,
    lists: impl Iterator<Item = ProbedList<'c>>,
    keep: impl Fn(u32, usize) -> bool,
    stats: &mut ScanStats,
) -> Vec<Candidate> {
    let rq = rotation.rotated(q.vector);
    let q_norm = dot(q.vector, q.vector).sqrt();
    let mut cands: Vec<Candidate> = Vec::new();
    let mut scanned = Vec::new();
    let mut uppers = KthBest::new(q.k);
    let mut lists = lists.peekable();
    while let Some(p) = lists.next() {
        if let Some(next) = lists.peek() {
            next.codes.prefetch();
        }
        let (l, c) = (p.list, p.codes);
        let lq = ListQuery::new(q.metric, &rq, q_norm, p.rotated, dot(q.vector, p.centroid));
        let bar = uppers.bar();
        if lq.list_bound(c) > bar {
            continue;
        }
        scanned.clear();
        lq.scan(c, &|i| keep(l, i), bar, &mut scanned);
        stats.codes_scanned += c.len() as u64;
        for &(lower, upper, i) in &scanned {
            uppers.offer(upper);
            cands.push(Candidate {
                lower,
                upper,
                list: l,
                i,
            });
        }
    }
    let bar = uppers.bar();
    cands.retain(|c| c.lower <= bar);
    cands.sort_by(|a, b| a.lower.total_cmp(&b.lower));
    stats.rerank_candidates += cands.len() as u64;
    cands
}

/// Every row of `lists` that `keep(list, i)` allows, unbounded: an
/// exact search reranks them all, so estimating them would order
/// nothing (and refining multi-bit codes of every row costs more than it
/// did with one bit).
pub(crate) fn every_row<'c>(
    lists: impl Iterator<Item = (u32, &'c ListCodes)>,
    keep: impl Fn(u32, usize) -> bool,
    stats: &mut ScanStats,
) -> Vec<Candidate> {
    let mut cands = Vec::new();
    for (l, codes) in lists {
        for i in 0..codes.len() {
            if keep(l, i) {
                cands.push(Candidate {
                    lower: f32::NEG_INFINITY,
                    upper: f32::INFINITY,
                    list: l,
                    i: i as u32,
                });
            }
        }
    }
    stats.rerank_candidates += cands.len() as u64;
    cands
}

/// Full-precision distances of the candidates (`row(list, i)` gives a
/// row's vector), best `k` first, ties broken by `id(list, i)`.
/// Candidates are taken by lower bound (as [`estimate_lists`] orders
/// them); once `k` are reranked, a candidate whose lower bound exceeds
/// the `k`-th best exact distance ends the rerank (unless `exact`):
/// neither it nor any after it can enter the top `k`. Returns
/// `(distance, list, i)`.
pub(crate) fn rerank_lists<'r>(
    q: &ShardQuery<'_>,
    exact: bool,
    cands: &[Candidate],
    row: impl Fn(u32, u32) -> &'r [f32],
    id: impl Fn(u32, u32) -> &'r str,
    stats: &mut ScanStats,
) -> Vec<(f32, u32, u32)> {
    let mut kth = KthBest::new(q.k);
    let mut best: Vec<(f32, u32, u32)> = Vec::new();
    for c in cands {
        if !exact && c.lower > kth.bar() {
            break;
        }
        let d = distance(q.metric, q.vector, row(c.list, c.i));
        kth.offer(d);
        best.push((d, c.list, c.i));
    }
    stats.vectors_compared += best.len() as u64;
    stats.rows_reranked += best.len() as u64;
    best.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| id(a.1, a.2).cmp(id(b.1, b.2))));
    best.truncate(q.k);
    best
}
