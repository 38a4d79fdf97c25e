//! Calibration: how many clusters a query must probe on *this* data.
//!
//! A fixed probe count is right only for data shaped like what it was
//! chosen on: clusters that follow real structure hold a query's
//! neighbours in a few of the nearest, while on data with little
//! structure (isotropic noise, some low-dimensional embeddings) the
//! neighbours spread over many clusters and recall falls with the share
//! of the index a query scans. So a routing measures it when trained:
//! rows held out of its sample play queries, their nearest neighbours
//! among the rest of the sample are found exactly, and the routing
//! records how far down a query's cluster order (nearest centroid first)
//! one must go to reach [`TARGET`] of those neighbours in the clusters
//! the indexer assigns them to. Readers probe at least that many
//! (`reader::routed`); the configured `nprobe` scales it.
//!
//! The sample is sparser than the index (`n` of `rows`): the index's
//! `k`-th neighbour lies about as far as the sample's `k × n / rows`-th,
//! so that is the neighbour rank calibrated on (at least the first,
//! which overstates the spread when the sample is much sparser: more
//! probes, not less recall).

use rayon::prelude::*;

use super::{keep_nearest, Routing};
use crate::index::{distance, distances_in_order};
use crate::index::ivf::probe_metric;

/// Neighbours per query the calibration is for (recall@10).
const K: usize = 10;
/// Share of the held-out rows' neighbours the calibrated probes reach:
/// above the 0.95 recall@10 shoal aims at, for the rows the rerank
/// misses and the sampling noise of a few hundred queries.
const TARGET: f64 = 0.97;
/// Most held-out query rows.
pub(super) const QUERIES: usize = 500;
/// Fewest sample rows a routing calibrates on (fewer: no calibration,
/// the default probes hold).
const MIN_SAMPLE: usize = 2_000;

/// Splits a sample (`n × dims`) into held-out query rows (every
/// `n / QUERIES`-th, at most one in 20) and the rest, in order. Too
/// small a sample holds none out.
pub(super) fn hold_out(sample: &[f32], dims: usize) -> (Vec<f32>, Vec<f32>) {
    let n = sample.len() / dims.max(1);
    if n < MIN_SAMPLE {
        return (Vec::new(), sample.to_vec());
    }
    let stride = n.div_ceil(QUERIES).max(20);
    let (mut queries, mut rest) = (Vec::new(), Vec::with_capacity(sample.len()));
    for (i, v) in sample.chunks_exact(dims).enumerate() {
        if i % stride == stride - 1 {
            queries.extend_from_slice(v);
        } else {
            rest.extend_from_slice(v);
        }
    }
    (queries, rest)
}

impl Routing {
    /// Clusters a query must probe (nearest centroid first) to reach
    /// [`TARGET`] of its neighbours, measured with `queries` against
    /// `pool` (the rows the routing was trained on, a uniform sample of
    /// an index of `rows` rows). 0 without queries. CPU-bound, parallel.
    pub(super) fn calibrate(&self, pool: &[f32], queries: &[f32], rows: u64) -> u32 {
        let d = self.head.dimensions;
        let n = pool.len() / d;
        if n == 0 || queries.is_empty() {
            return 0;
        }
        let k = ((K as f64 * n as f64 / rows.max(1) as f64).round() as usize).clamp(1, K.min(n));
        let (metric, pm) = (self.head.metric, probe_metric(self.head.metric));
        // Each query's exact neighbours in the pool, a tile of queries at
        // a time: the pool streams from memory once per tile, not once
        // per query.
        let tile = crate::index::tile_rows(d);
        let pool_rows: Vec<&[f32]> = pool.chunks_exact(d).collect();
        let neighbours = |qs: &[f32]| -> Vec<Vec<(f32, u32)>> {
            let rows: Vec<&[f32]> = qs.chunks_exact(d).collect();
            let mut near: Vec<Vec<(f32, u32)>> = rows.iter().map(|_| Vec::with_capacity(n)).collect();
            distances_in_order(metric, &rows, &pool_rows, |q, i, dist| {
                near[q].push((dist, i as u32));
            });
            for near in near.iter_mut() {
                keep_nearest(near, k, |&(dist, i)| (dist, i));
            }
            near
        };
        // Where each neighbour's cluster falls in the query's route.
        let ranks_of = |q: &[f32], near: Vec<(f32, u32)>| -> Vec<u32> {
            let cents: Vec<f32> = (0..self.head.clusters)
                .map(|c| distance(pm, q, self.centroid(c)))
                .collect();
            near.into_iter()
                .map(|(_, i)| {
                    let v = &pool[i as usize * d..(i as usize + 1) * d];
                    let c = self.cluster_of(v);
                    // Its cluster's place in the query's route: the
                    // clusters before it by (distance, id).
                    let at = (cents[c as usize], c);
                    cents
                        .iter()
                        .zip(0u32..)
                        .filter(|&(&x, j)| x.total_cmp(&at.0).then(j.cmp(&at.1)).is_lt())
                        .count() as u32
                })
                .collect()
        };
        let mut ranks: Vec<u32> = queries
            .par_chunks(tile * d)
            .flat_map_iter(|qs| {
                let near = neighbours(qs);
                qs.chunks_exact(d)
                    .zip(near)
                    .flat_map(|(q, near)| ranks_of(q, near))
                    .collect::<Vec<_>>()
            })
            .collect();
        ranks.sort_unstable();
        let at = ((TARGET * ranks.len() as f64).ceil() as usize).clamp(1, ranks.len());
        ranks[at - 1] + 1
    }
}
