use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::index::l2_squared;

/// `n` rows of `dims`-d data around `centres` random centres.
fn blobs(n: usize, dims: usize, centres: usize, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    let c: Vec<f32> = (0..centres * dims).map(|_| rng.random_range(-1.0..1.0)).collect();
    let mut out = Vec::with_capacity(n * dims);
    for _ in 0..n {
        let k = rng.random_range(0..centres);
        for j in 0..dims {
            out.push(c[k * dims + j] + rng.random_range(-0.15..0.15));
        }
    }
    out
}

fn exact_nearest(r: &Routing, v: &[f32]) -> u32 {
    let pm = probe_metric(r.head.metric);
    (0..r.head.clusters)
        .map(|c| (distance(pm, v, r.centroid(c)), c))
        .min_by(|a, b| a.0.total_cmp(&b.0))
        .expect("clusters")
        .1
}

#[test]
fn training_sizes_clusters_for_the_rows_and_groups_them() {
    let dims = 16;
    let sample = blobs(20_000, dims, 300, 1);
    let rows = 200 * TARGET_CLUSTER_ROWS as u64;
    let r = Routing::train(&sample, dims, Metric::Euclidean, rows, 7);
    let h = &r.head;
    // About rows / TARGET_CLUSTER_ROWS clusters, in about √ of that groups.
    assert!((180..=220).contains(&h.clusters), "{} clusters", h.clusters);
    assert!((10..=18).contains(&h.groups()), "{} groups", h.groups());
    assert_eq!(r.centroids.len(), h.clusters as usize * dims);
    assert_eq!(h.generation, 7);
    assert_eq!(h.trained_rows, rows);
    // Cluster ids run through the groups in order.
    let mut next = 0;
    for g in &h.groups {
        assert_eq!(g.first, next);
        next += g.clusters;
        assert_eq!(h.group_of(g.first), h.group_of(g.first + g.clusters - 1));
    }
    assert_eq!(next, h.clusters);
    // A small sample trains fewer clusters than the rows ask for.
    let small = Routing::train(&sample[..80 * dims], dims, Metric::Euclidean, 1_000_000, 1);
    assert!(small.head.clusters <= 10, "{}", small.head.clusters);
    // Training is deterministic: same sample, same object.
    let again = Routing::train(&sample, dims, Metric::Euclidean, rows, 7);
    assert_eq!(again.encode(), r.encode());
}

#[test]
fn routing_through_the_beam_finds_the_nearest_cluster() {
    for metric in [Metric::Euclidean, Metric::Cosine] {
        let dims = 24;
        let mut data = blobs(30_000, dims, 400, 2);
        if metric == Metric::Cosine {
            for v in data.chunks_exact_mut(dims) {
                let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                v.iter_mut().for_each(|x| *x /= n);
            }
        }
        let r = Routing::train(&data, dims, metric, 300_000, 1);
        let assigned = r.assign(&data);
        let agree = data
            .chunks_exact(dims)
            .zip(&assigned)
            .filter(|(v, c)| exact_nearest(&r, v) == **c)
            .count();
        // The beam misses the exact nearest cluster only for rows on a
        // boundary between groups.
        assert!(agree * 100 >= data.len() / dims * 97, "{metric}: {agree} agree");
        // A query probing 8 clusters through the beam finds its exact
        // nearest cluster among them.
        let queries = blobs(500, dims, 400, 2);
        let found = queries
            .chunks_exact(dims)
            .filter(|q| {
                let want = exact_nearest(&r, q);
                r.nearest(q, 3, 8).iter().any(|&(_, c)| c == want)
            })
            .count();
        assert!(found >= 495, "{metric}: {found} of 500");
        // Sorted nearest first, distances as the metric gives them.
        let near = r.nearest(&queries[..dims], r.head.groups(), 5);
        assert!(near.windows(2).all(|w| w[0].0 <= w[1].0));
        assert_eq!(near[0].1, exact_nearest(&r, &queries[..dims]));
    }
}

/// `assign` batches rows a group at a time; it must give each row the
/// cluster `cluster_of` gives it, every group of the beam counted. Noise,
/// so rows often land in a far group of their beam.
#[test]
fn batched_assignment_gives_each_row_its_cluster() {
    let dims = 32;
    let mut rng = StdRng::seed_from_u64(12);
    let data: Vec<f32> = (0..20_000 * dims).map(|_| rng.random_range(-1.0..1.0)).collect();
    for metric in [Metric::Euclidean, Metric::Cosine] {
        let r = Routing::train(&data, dims, metric, 400_000, 1);
        assert!(r.head.groups() > ASSIGN_BEAM && !(data.len() / dims).is_multiple_of(ASSIGN_BATCH));
        let assigned = r.assign(&data);
        let one_by_one: Vec<u32> = data.chunks_exact(dims).map(|v| r.cluster_of(v)).collect();
        assert_eq!(assigned, one_by_one, "{metric}");
        // Rows whose cluster sits in the last group of their beam: a
        // batch that dropped that group would differ on each.
        let last = data
            .chunks_exact(dims)
            .zip(&assigned)
            .filter(|(v, c)| {
                let (_, g) = r.head.nearest_groups(v)[ASSIGN_BEAM - 1];
                let e = &r.head.groups[g as usize];
                (e.first..e.first + e.clusters).contains(c)
            })
            .count();
        assert!(last > 0, "{metric}: no row's cluster is in its beam's last group");
    }
}

#[test]
fn the_object_round_trips_and_a_reader_can_fetch_it_in_parts() {
    let dims = 8;
    let r = Routing::train(&blobs(5_000, dims, 50, 3), dims, Metric::Dot, 40_000, 3);
    assert!(r.head.calibrated_probes > 0);
    let bytes = r.encode();
    assert_eq!(Routing::decode(&bytes).unwrap(), r);
    // Listed under its generation it parses; under another it is refused.
    assert_eq!(Routing::decode_listed(&bytes, 3).unwrap(), r);
    let e = Routing::decode_listed(&bytes, 4).unwrap_err().0;
    assert!(e.contains("generation 3 where the index manifest lists 4"), "{e}");
    // The head alone, from the object's first bytes...
    let region = r.head.region_len() as usize;
    let head = RoutingHead::parse(&bytes[..region]).unwrap();
    assert_eq!(head, r.head);
    // ...then each group's block by its range.
    let mut centroids = Vec::new();
    for (g, e) in head.groups.iter().enumerate() {
        let rg = e.range();
        centroids.extend(head.group_centroids(g, &bytes[rg.start as usize..rg.end as usize]).unwrap());
    }
    assert_eq!(centroids, r.centroids);
}

#[test]
fn damaged_objects_are_refused_with_what_is_wrong() {
    let dims = 4;
    let r = Routing::train(&blobs(2_000, dims, 20, 4), dims, Metric::Euclidean, 20_000, 1);
    let bytes = r.encode();
    let region = r.head.region_len() as usize;
    let err = |b: &[u8]| Routing::decode(b).unwrap_err().0;
    // A flipped bit in the head, in a group's block, a wrong magic, a
    // newer version, truncation: each refused.
    let mut b = bytes.clone();
    b[region - 3] ^= 1;
    assert!(err(&b).contains("checksum mismatch in the head"), "{}", err(&b));
    let mut b = bytes.clone();
    let g1 = r.head.groups[1].offset as usize;
    b[g1 + 1] ^= 1;
    assert!(err(&b).contains("group 1"), "{}", err(&b));
    let mut b = bytes.clone();
    b[0] = b'X';
    assert!(err(&b).contains("magic"));
    let mut b = bytes.clone();
    b[8] = 3;
    assert!(err(&b).contains("version 3"), "{}", err(&b));
    assert!(err(&bytes[..bytes.len() - 1]).contains("truncated"));
    assert!(err(&bytes[..region - 1]).contains("truncated"));
    assert!(err(&bytes[..10]).contains("truncated"));
    // A block handed to the wrong group is refused too.
    let e0 = r.head.groups[0].range();
    assert!(r
        .head
        .group_centroids(1, &bytes[e0.start as usize..e0.end as usize])
        .is_err());
}

/// A routing trained on ordinary data stores its groups as `u8` codes (a
/// quarter of the bytes at these dimensions) and holds in memory exactly
/// the centroids those codes decode to: the indexer encodes residuals
/// against what a reader will decode.
#[test]
fn trained_centroids_are_snapped_to_what_their_codes_decode_to() {
    for metric in [Metric::Euclidean, Metric::Cosine] {
        let dims = 64;
        let mut data = blobs(20_000, dims, 200, 9);
        if metric == Metric::Cosine {
            for v in data.chunks_exact_mut(dims) {
                let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                v.iter_mut().for_each(|x| *x /= n);
            }
        }
        let r = Routing::train(&data, dims, metric, 200 * TARGET_CLUSTER_ROWS as u64, 1);
        let h = &r.head;
        assert_eq!(h.version, 2);
        let snapped = h.groups.iter().filter(|g| g.snapped(dims)).count();
        assert_eq!(snapped, h.groups(), "{metric}: {snapped} of {} groups snapped", h.groups());
        let bytes = r.encode();
        let (plain, body) = (h.clusters as usize * dims * 4, bytes.len() - h.region_len() as usize);
        assert!(body * 3 < plain, "{metric}: {body} bytes of centroids, {plain} as f32");
        // Each group's block, parsed alone, gives the centroids held.
        for (g, e) in h.groups.iter().enumerate() {
            let rg = e.range();
            let got = h.group_centroids(g, &bytes[rg.start as usize..rg.end as usize]).unwrap();
            let d = h.dimensions;
            let held = &r.centroids[e.first as usize * d..(e.first + e.clusters) as usize * d];
            assert_eq!(got, held, "{metric}: group {g}");
        }
        // And routing is as good as ever: rows land in their nearest
        // cluster of the snapped centroids (the beam aside).
        let assigned = r.assign(&data[..2_000 * dims]);
        let agree = data[..2_000 * dims]
            .chunks_exact(dims)
            .zip(&assigned)
            .filter(|(v, c)| exact_nearest(&r, v) == **c)
            .count();
        assert!(agree >= 1_940, "{metric}: {agree} of 2000");
    }
}

/// A reader ranks a snapped group's centroids from their codes: each
/// distance is the decoded centroid's, up to rounding, for every metric,
/// and the nearest clusters come out the same.
#[test]
fn ranking_by_codes_gives_the_decoded_centroids_distances() {
    for metric in [Metric::Euclidean, Metric::Cosine, Metric::Dot] {
        let dims = 48;
        let mut data = blobs(12_000, dims, 150, 21);
        if metric != Metric::Euclidean {
            for v in data.chunks_exact_mut(dims) {
                let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                v.iter_mut().for_each(|x| *x /= n);
            }
        }
        let r = Routing::train(&data, dims, metric, 150 * TARGET_CLUSTER_ROWS as u64, 1);
        let (h, bytes) = (&r.head, r.encode());
        let pm = probe_metric(metric);
        let queries = blobs(50, dims, 150, 22);
        let (mut compared, mut bounded, mut widest) = (0, 0, 0f32);
        for q in queries.chunks_exact(dims) {
            let rq = RankQuery::new(q);
            let mut by_codes = Vec::new();
            for (g, e) in h.groups.iter().enumerate() {
                let at = e.range();
                let codes = h.group_rank_codes(g, &bytes[at.start as usize..at.end as usize]).unwrap();
                let to_top = distance(pm, q, h.top_centroid(g));
                let mut exact_of = Vec::new();
                codes.distances(pm, &rq, to_top, |j, d| {
                    let c = e.first + j as u32;
                    let exact = distance(pm, q, r.centroid(c));
                    let scale = exact.abs().max(1.0);
                    assert!((d - exact).abs() <= 1e-4 * scale, "{metric} cluster {c}: {d} vs {exact}");
                    by_codes.push((d, c));
                    exact_of.push(d);
                    compared += 1;
                });
                // The integer bounds hold each float distance, closely.
                codes.bounds(pm, &rq, to_top, |j, lower, upper| {
                    let d = exact_of[j];
                    assert!(lower <= d && d <= upper, "{metric} cluster {}: {d} outside [{lower}, {upper}]", e.first + j as u32);
                    widest = widest.max((upper - lower) / d.abs().max(1.0));
                    bounded += 1;
                });
            }
            keep_nearest(&mut by_codes, 8, |&(d, c)| (d, c));
            let exact: Vec<u32> = r.nearest(q, h.groups(), 8).iter().map(|&(_, c)| c).collect();
            let got: Vec<u32> = by_codes.iter().map(|&(_, c)| c).collect();
            assert_eq!(got, exact, "{metric}");
        }
        assert_eq!(compared, 50 * h.clusters as usize);
        assert_eq!(bounded, compared);
        // Tight enough that only near-ties are ranked exactly.
        assert!(widest < 1e-3, "{metric}: bounds {widest} wide");
    }
}

/// Where a `u8` code cannot place a centroid closely enough to keep it
/// apart from its sibling (a coordinate spanning far more than the gap
/// between two clusters), the group keeps its centroids as f32, exact;
/// other groups are still snapped, each centroid within the tolerance.
#[test]
fn a_group_that_would_lose_its_cells_keeps_f32_centroids() {
    let dims = 4;
    // Group 0: two clusters 0.01 apart in a coordinate whose offsets
    // from the top span 1,000 (a code's step is ~4).
    let close = vec![1000.0, 0.0, 0.0, 0.0, 1000.0, 0.01, 0.0, 0.0];
    // Group 1: clusters far apart for the step.
    let apart = vec![5.0, 1.0, 0.0, 2.0, 6.0, 3.0, 1.5, 0.0, 4.0, 2.0, 2.0, 1.0];
    let parts = vec![(vec![0.0; dims], close.clone()), (vec![5.0, 2.0, 1.0, 1.0], apart.clone())];
    let r = Routing::from_parts(dims, Metric::Euclidean, 1, 1_000, parts);
    let g = &r.head.groups;
    assert!(!g[0].snapped(dims) && g[0].len == 2 * dims as u64 * 4);
    assert!(g[1].snapped(dims) && g[1].len == 3 * (8 + dims as u64));
    assert_eq!(&r.centroids[..2 * dims], &close[..]);
    let bytes = r.encode();
    let at = |e: &Group| &bytes[e.offset as usize..(e.offset + e.len) as usize];
    assert!(r.head.group_rank_codes(0, at(&g[0])).is_none());
    assert!(r.head.group_rank_codes(1, at(&g[1])).is_some());
    for (i, c) in apart.chunks_exact(dims).enumerate() {
        let held = r.centroid(2 + i as u32);
        let moved = l2_squared(c, held).sqrt();
        let sibling = apart
            .chunks_exact(dims)
            .filter(|o| o != &c)
            .map(|o| l2_squared(c, o).sqrt())
            .fold(f32::INFINITY, f32::min);
        assert!(moved > 0.0 && moved <= SNAP_TOLERANCE * sibling, "{i}: moved {moved}");
    }
    assert_eq!(Routing::decode(&r.encode()).unwrap(), r);
}

/// Routings written before `u8` blocks (version 1: f32 blocks only) are
/// read as they were; a version 1 object claiming a `u8` block is
/// refused.
#[test]
fn version_1_objects_are_still_read() {
    let dims = 4;
    let close = vec![1000.0, 0.0, 0.0, 0.0, 1000.0, 0.01, 0.0, 0.0];
    let mut old = Routing::from_parts(dims, Metric::Euclidean, 1, 1_000, vec![(vec![0.0; dims], close)]);
    old.head.version = 1;
    let bytes = old.encode();
    assert_eq!(u16::from_le_bytes([bytes[8], bytes[9]]), 1);
    let read = Routing::decode(&bytes).unwrap();
    assert_eq!(read, old);
    assert_eq!(read.head.version, 1);

    let mut snapped = Routing::train(&blobs(2_000, dims, 20, 4), dims, Metric::Euclidean, 20_000, 1);
    assert!(snapped.head.groups.iter().any(|g| g.snapped(dims)));
    snapped.head.version = 1;
    let e = Routing::decode(&snapped.encode()).unwrap_err().0;
    assert!(e.contains("does not follow"), "{e}");
}

/// `n` rows of `dims`-d uniform noise: no structure for clusters to find.
fn noise(n: usize, dims: usize, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n * dims).map(|_| rng.random_range(-1.0..1.0)).collect()
}

/// Recall@10 of probing each query's `probes` nearest clusters, the
/// rows in the clusters the indexer assigns them to.
fn recall_at(r: &Routing, data: &[f32], queries: &[f32], probes: usize) -> f64 {
    let dims = r.head.dimensions;
    let assigned = r.assign(data);
    let mut found = 0;
    for q in queries.chunks_exact(dims) {
        let mut near: Vec<(f32, u32)> = data
            .chunks_exact(dims)
            .zip(0u32..)
            .map(|(v, i)| (distance(Metric::Euclidean, q, v), i))
            .collect();
        keep_nearest(&mut near, 10, |&(d, i)| (d, i));
        let probed: Vec<u32> = r
            .nearest(q, r.head.groups(), probes)
            .into_iter()
            .map(|(_, c)| c)
            .collect();
        found += near
            .iter()
            .filter(|(_, i)| probed.contains(&assigned[*i as usize]))
            .count();
    }
    found as f64 / (queries.len() / dims * 10) as f64
}

/// Calibration measures how many clusters a query must probe on the
/// data at hand: few where rows cluster, many where they do not, and on
/// queries it never saw that many reach recall@10 of 0.95 while the
/// default count would not.
#[test]
fn calibration_finds_the_probes_the_data_needs() {
    let dims = 32;
    let rows = 20_000;
    let tight = Routing::train(&blobs(rows, dims, 100, 5), dims, Metric::Euclidean, rows as u64, 1);
    let data = noise(rows, dims, 6);
    let loose = Routing::train(&data, dims, Metric::Euclidean, rows as u64, 1);
    let (t, l) = (tight.head.calibrated_probes, loose.head.calibrated_probes);
    assert!(t >= 1 && t * 8 <= tight.head.clusters, "tight: {t} of {}", tight.head.clusters);
    assert!(l > 4 * t, "noise: {l}, blobs: {t}");
    assert!(l <= loose.head.clusters, "{l} of {}", loose.head.clusters);
    let queries = noise(200, dims, 7);
    let at = recall_at(&loose, &data, &queries, l as usize);
    assert!(at >= 0.95, "recall {at} at the calibrated {l} probes");
    let fewer = recall_at(&loose, &data, &queries, (l / 3) as usize);
    assert!(fewer < 0.95, "recall {fewer} at a third of the calibrated {l}");
    // Too small a sample to hold queries out of: not calibrated.
    let small = Routing::train(&data[..1_000 * dims], dims, Metric::Euclidean, 1_000, 1);
    assert_eq!(small.head.calibrated_probes, 0);
}

/// Calibration's neighbour search takes a tile of queries at a time; it
/// finds the probes a query-by-query search finds.
#[test]
fn calibration_by_tiles_matches_one_query_at_a_time() {
    let dims = 24;
    let pool = noise(6_000, dims, 12);
    let queries = noise(90, dims, 13);
    let r = Routing::train(&pool, dims, Metric::Euclidean, 60_000, 1);
    let rows = 60_000u64;
    let n = pool.len() / dims;
    let k = ((10.0 * n as f64 / rows as f64).round() as usize).clamp(1, 10);
    let mut ranks: Vec<u32> = Vec::new();
    for q in queries.chunks_exact(dims) {
        let mut near: Vec<(f32, u32)> = pool
            .chunks_exact(dims)
            .zip(0u32..)
            .map(|(v, i)| (distance(Metric::Euclidean, q, v), i))
            .collect();
        keep_nearest(&mut near, k, |&(d, i)| (d, i));
        let route: Vec<u32> = r
            .nearest(q, r.head.groups(), r.head.clusters as usize)
            .into_iter()
            .map(|(_, c)| c)
            .collect();
        for (_, i) in near {
            let c = r.cluster_of(&pool[i as usize * dims..(i as usize + 1) * dims]);
            ranks.push(route.iter().position(|&x| x == c).unwrap() as u32);
        }
    }
    ranks.sort_unstable();
    let at = ((0.97 * ranks.len() as f64).ceil() as usize).clamp(1, ranks.len());
    assert!(ranks[at - 1] > 3, "a spread worth measuring: {}", ranks[at - 1]);
    assert_eq!(r.calibrate(&pool, &queries, rows), ranks[at - 1] + 1);
}
