//! The order a routing numbers its groups and clusters in: points near
//! each other in space get ids near each other.
//!
//! Ids decide where things lie in the bucket. A shard lays its clusters
//! out by id, and the indexer cuts shards at ranges of consecutive ids
//! (`compact::routed::write_by_cluster_range`); a routing's group blocks
//! lie in id order too. A query probes the clusters nearest it, so when
//! nearby clusters have nearby ids its probe blocks sit in few shards,
//! next to each other, and a cold query fetches them in few ranged GETs.
//! k-means numbers its centroids in no such order: on the 4M noisy-copy
//! set a cold query's 128 probed clusters lay in 16 of 24 shards and
//! took 86 requests.
//!
//! The order is recursive halving: sort a set of points by their
//! projection on the set's principal direction, cut it at the median,
//! and order each half the same way. Each half's own direction is
//! turned so the half runs on from where the one before it ended.

/// Power-iteration steps for a set's principal direction: enough to
/// settle the direction a set is most spread along, which is all the
/// halving needs (an approximate axis still cuts the set in two
/// compact halves).
const POWER_STEPS: usize = 12;

/// The indices of `points` (rows of `dims` values) in an order that
/// keeps points near each other in space near each other in the order,
/// starting at the end nearer `from` when given. Deterministic.
pub(crate) fn spatial_order(points: &[f32], dims: usize, from: Option<&[f32]>) -> Vec<usize> {
    let n = points.len().checked_div(dims).unwrap_or(0);
    let mut order: Vec<usize> = (0..n).collect();
    halve(points, dims, &mut order, from);
    order
}

/// A routing's groups (top centroid, clusters' centroids) renumbered so
/// that groups near each other, and each group's clusters, get
/// consecutive ids: the groups in [`spatial_order`] of their top
/// centroids, then each group's clusters in that order too, starting
/// near where the group before it ended.
pub(super) fn in_spatial_order(
    parts: Vec<(Vec<f32>, Vec<f32>)>,
    dims: usize,
) -> Vec<(Vec<f32>, Vec<f32>)> {
    let tops: Vec<f32> = parts.iter().flat_map(|(t, _)| t.iter().copied()).collect();
    let mut slots: Vec<Option<(Vec<f32>, Vec<f32>)>> = parts.into_iter().map(Some).collect();
    let mut out = Vec::with_capacity(slots.len());
    let mut last: Option<Vec<f32>> = None;
    for g in spatial_order(&tops, dims, None) {
        let (top, cents) = slots[g].take().expect("each group once");
        let order = spatial_order(&cents, dims, last.as_deref());
        let cents: Vec<f32> = order
            .iter()
            .flat_map(|&c| cents[c * dims..(c + 1) * dims].iter().copied())
            .collect();
        last = cents.len().checked_sub(dims).map(|at| cents[at..].to_vec());
        out.push((top, cents));
    }
    out
}

/// Orders `idx` in place; with `from`, the order starts at the end of
/// the set nearer that point (where the order before it ended).
fn halve(points: &[f32], dims: usize, idx: &mut [usize], from: Option<&[f32]>) {
    let row = |i: usize| &points[i * dims..(i + 1) * dims];
    if idx.len() < 2 {
        return;
    }
    let mean = mean_of(points, dims, idx);
    let dir = principal_direction(points, dims, idx, &mean);
    let project = |v: &[f32]| -> f32 {
        v.iter()
            .zip(&mean)
            .zip(&dir)
            .map(|((x, m), d)| (x - m) * d)
            .sum()
    };
    let mut keyed: Vec<(f32, usize)> = idx.iter().map(|&i| (project(row(i)), i)).collect();
    // Run from the end nearer `from`.
    let flip = from.is_some_and(|f| project(f) > 0.0);
    keyed.sort_by(|a, b| {
        let by = a.0.total_cmp(&b.0).then(a.1.cmp(&b.1));
        if flip {
            by.reverse()
        } else {
            by
        }
    });
    for (slot, (_, i)) in idx.iter_mut().zip(&keyed) {
        *slot = *i;
    }
    if idx.len() == 2 {
        return;
    }
    let mid = idx.len() / 2;
    let (first, second) = idx.split_at_mut(mid);
    halve(points, dims, first, from);
    let last = row(*first.last().expect("a non-empty half")).to_vec();
    halve(points, dims, second, Some(&last));
}

fn mean_of(points: &[f32], dims: usize, idx: &[usize]) -> Vec<f32> {
    let mut sum = vec![0f64; dims];
    for &i in idx {
        for (s, x) in sum.iter_mut().zip(&points[i * dims..(i + 1) * dims]) {
            *s += f64::from(*x);
        }
    }
    sum.iter().map(|s| (s / idx.len() as f64) as f32).collect()
}

/// The direction `idx`'s points spread along most (unit length), by
/// power iteration from the offset of the point farthest from `mean`;
/// any unit vector when they all coincide.
fn principal_direction(points: &[f32], dims: usize, idx: &[usize], mean: &[f32]) -> Vec<f32> {
    let offset = |i: usize| {
        points[i * dims..(i + 1) * dims]
            .iter()
            .zip(mean)
            .map(|(x, m)| x - m)
    };
    let far = idx
        .iter()
        .map(|&i| (offset(i).map(|x| x * x).sum::<f32>(), i))
        .max_by(|a, b| a.0.total_cmp(&b.0).then(b.1.cmp(&a.1)))
        .map(|(_, i)| i)
        .expect("a non-empty set");
    let mut dir: Vec<f32> = offset(far).collect();
    if !unit(&mut dir) {
        let mut any = vec![0f32; dims];
        any[0] = 1.0;
        return any;
    }
    for _ in 0..POWER_STEPS {
        let mut next = vec![0f32; dims];
        for &i in idx {
            let along: f32 = offset(i).zip(&dir).map(|(x, d)| x * d).sum();
            for (n, x) in next.iter_mut().zip(offset(i)) {
                *n += along * x;
            }
        }
        if !unit(&mut next) {
            break;
        }
        dir = next;
    }
    dir
}

/// Scales `v` to unit length; false when it has none.
fn unit(v: &mut [f32]) -> bool {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if !(norm > 0.0 && norm.is_finite()) {
        return false;
    }
    v.iter_mut().for_each(|x| *x /= norm);
    true
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    /// The mean distance between points next to each other in `order`.
    fn mean_step(points: &[f32], dims: usize, order: &[usize]) -> f32 {
        let row = |i: usize| &points[i * dims..(i + 1) * dims];
        let steps: f32 = order
            .windows(2)
            .map(|w| crate::index::l2_squared(row(w[0]), row(w[1])).sqrt())
            .sum();
        steps / (order.len() - 1) as f32
    }

    #[test]
    fn the_order_is_a_permutation_that_keeps_neighbours_close() {
        let (dims, n) = (24, 400);
        let mut rng = StdRng::seed_from_u64(3);
        // Points along a noisy curve through space, shuffled.
        let mut points = Vec::with_capacity(n * dims);
        for _ in 0..n {
            let t: f32 = rng.random_range(0.0..10.0);
            for j in 0..dims {
                let on_curve = (t * (1.0 + j as f32 * 0.1)).sin();
                points.push(on_curve + rng.random_range(-0.05..0.05));
            }
        }
        let order = spatial_order(&points, dims, None);
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..n).collect::<Vec<_>>(), "a permutation");
        assert_eq!(order, spatial_order(&points, dims, None), "deterministic");
        let given: Vec<usize> = (0..n).collect();
        let (ordered, shuffled) = (mean_step(&points, dims, &order), mean_step(&points, dims, &given));
        assert!(
            ordered * 3.0 < shuffled,
            "neighbours in the order are {ordered} apart, in the given order {shuffled}"
        );
    }

    #[test]
    fn groups_are_renumbered_whole_and_in_order() {
        let (dims, groups, per) = (8, 40, 10);
        let mut rng = StdRng::seed_from_u64(5);
        let parts: Vec<(Vec<f32>, Vec<f32>)> = (0..groups)
            .map(|_| {
                // Tops along a curve through space, in random order.
                let t: f32 = rng.random_range(0.0..10.0);
                let top: Vec<f32> = (0..dims).map(|j| (t * (1.0 + j as f32 * 0.1)).sin()).collect();
                let cents = (0..per * dims)
                    .map(|j| top[j % dims] + rng.random_range(-0.1..0.1))
                    .collect();
                (top, cents)
            })
            .collect();
        let out = in_spatial_order(parts.clone(), dims);
        assert_eq!(out.len(), groups);
        // Each group keeps its top and the same clusters, reordered.
        let sorted_rows = |v: &[f32]| {
            let mut rows: Vec<Vec<u32>> =
                v.chunks_exact(dims).map(|r| r.iter().map(|x| x.to_bits()).collect()).collect();
            rows.sort();
            rows
        };
        let mut seen = vec![false; groups];
        for (top, cents) in &out {
            let g = parts.iter().position(|(t, _)| t == top).expect("a given group");
            assert!(!seen[g], "group {g} twice");
            seen[g] = true;
            assert_eq!(sorted_rows(cents), sorted_rows(&parts[g].1), "group {g}'s clusters");
        }
        // Consecutive groups are nearer each other than in the given order.
        let tops = |ps: &[(Vec<f32>, Vec<f32>)]| -> Vec<f32> {
            ps.iter().flat_map(|(t, _)| t.iter().copied()).collect()
        };
        let all: Vec<usize> = (0..groups).collect();
        let ordered = mean_step(&tops(&out), dims, &all);
        let given = mean_step(&tops(&parts), dims, &all);
        assert!(ordered * 3.0 < given, "{ordered} against {given}");
    }

    #[test]
    fn degenerate_sets_are_ordered_without_panicking() {
        assert!(spatial_order(&[], 4, None).is_empty());
        assert_eq!(spatial_order(&[1.0, 2.0], 2, None), vec![0]);
        // Every point the same.
        let same = vec![0.5f32; 5 * 3];
        let mut got = spatial_order(&same, 3, None);
        got.sort_unstable();
        assert_eq!(got, vec![0, 1, 2, 3, 4]);
    }
}
