//! IVF (inverted file) index for one segment.
//!
//! Build: k-means (spherical for cosine, Euclidean otherwise) with
//! `nlist ≈ √n` centroids, trained on a sample, then every record assigned
//! to its nearest centroid. Compaction writes the records *grouped by
//! cluster*, one group of sections per cluster, so each cluster's ids,
//! vectors and metadata are contiguous byte ranges in the directory. The
//! index section holds only the centroids and each cluster's first
//! position.
//!
//! Search: rank the centroids against the query, scan the `nprobe` best
//! clusters with the exact kernel. How a filter widens `nprobe` (or turns
//! the search exact) is the shared filter policy, [`super::route`].

use rand::rngs::StdRng;
use rand::seq::index::sample;
use rand::SeedableRng;
use rayon::prelude::*;

use super::{distance, Built, Candidate, QueryParams, ScanStats, SegmentAnn, SegmentView, TopK};
use crate::record::{flat_vectors, Prepared};
use crate::vocab::{IndexSettings, Metric};

pub(crate) const TAG: &[u8; 4] = b"IVF1";

/// Build parameters.
#[derive(Clone, Debug)]
pub struct IvfParams {
    /// Clusters; default `round(√n)`, at least 1.
    pub nlist: Option<usize>,
    pub iterations: usize,
    /// Training sample size per cluster.
    pub sample_per_list: usize,
    pub seed: u64,
}

impl Default for IvfParams {
    fn default() -> Self {
        IvfParams {
            nlist: None,
            iterations: 12,
            sample_per_list: 64,
            seed: 0x5eed,
        }
    }
}

/// A trained IVF index over a segment whose records are grouped by
/// cluster: cluster `c` holds positions `starts[c]..starts[c + 1]`.
#[derive(Clone, Debug, PartialEq)]
pub struct IvfIndex {
    pub dims: usize,
    pub centroids: Vec<f32>,
    pub starts: Vec<u32>,
}

impl IvfIndex {
    pub fn nlist(&self) -> usize {
        self.starts.len() - 1
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.centroids.len() * 4 + self.starts.len() * 4);
        out.extend_from_slice(TAG);
        out.extend_from_slice(&(self.dims as u32).to_le_bytes());
        out.extend_from_slice(&(self.nlist() as u32).to_le_bytes());
        for x in &self.centroids {
            out.extend_from_slice(&x.to_le_bytes());
        }
        for s in &self.starts {
            out.extend_from_slice(&s.to_le_bytes());
        }
        out
    }

    /// Parses an index section; checks it fits a segment of `records`.
    pub(crate) fn from_bytes(b: &[u8], dims: usize, records: usize) -> Result<Self, String> {
        let u32_at = |i: usize| -> Result<u32, String> {
            b.get(i..i + 4)
                .map(|s| u32::from_le_bytes(s.try_into().expect("4 bytes")))
                .ok_or_else(|| "IVF index is truncated".to_string())
        };
        if b.get(..4) != Some(TAG.as_slice()) {
            return Err("not an IVF index".into());
        }
        let (d, nlist) = (u32_at(4)? as usize, u32_at(8)? as usize);
        if d != dims || nlist == 0 || nlist > records.max(1) {
            return Err(format!(
                "IVF index for {d}-d with {nlist} lists does not fit this segment"
            ));
        }
        let want = 12 + nlist * d * 4 + (nlist + 1) * 4;
        if b.len() != want {
            return Err(format!("IVF index is {} bytes, expected {want}", b.len()));
        }
        let centroids = b[12..12 + nlist * d * 4]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect();
        let starts: Vec<u32> = b[12 + nlist * d * 4..]
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect();
        if starts[0] != 0
            || starts.windows(2).any(|w| w[0] > w[1])
            || starts[nlist] as usize != records
        {
            return Err("IVF cluster boundaries are inconsistent".into());
        }
        Ok(IvfIndex {
            dims,
            centroids,
            starts,
        })
    }

    fn centroid(&self, c: usize) -> &[f32] {
        &self.centroids[c * self.dims..(c + 1) * self.dims]
    }

    /// The positions of list `c`.
    #[cfg(any(test, feature = "test-util"))]
    pub fn list(&self, c: usize) -> std::ops::Range<usize> {
        self.starts[c] as usize..self.starts[c + 1] as usize
    }
}

impl SegmentAnn for IvfIndex {
    #[cfg(any(test, feature = "test-util"))]
    const KIND: crate::vocab::AnnKind = crate::vocab::AnnKind::Ivf;

    /// Trains the centroids and groups the records by cluster: the
    /// segment stores one group of sections per cluster, so a cluster's
    /// ids, vectors and metadata are contiguous ranges a cold reader can
    /// fetch alone.
    fn build(records: Vec<Prepared>, dims: usize, metric: Metric, ix: &IndexSettings) -> Built {
        let p = IvfParams {
            nlist: ix.nlist.map(|n| n as usize),
            ..Default::default()
        };
        let (centroids, assign) = train(&flat_vectors(&records, dims), dims, metric, &p);
        let nlist = centroids.len() / dims;
        let mut groups: Vec<Vec<Prepared>> = vec![Vec::new(); nlist];
        for (r, c) in records.into_iter().zip(&assign) {
            groups[*c as usize].push(r);
        }
        let mut starts = vec![0u32];
        for g in &groups {
            starts.push(starts.last().expect("starts with 0") + g.len() as u32);
        }
        let bytes = IvfIndex {
            dims,
            centroids,
            starts,
        }
        .to_bytes();
        Built { groups, bytes }
    }

    fn from_bytes(bytes: &[u8], dims: usize, records: usize) -> Result<Self, String> {
        IvfIndex::from_bytes(bytes, dims, records)
    }

    /// Scans the `params.nprobe` best clusters for `query` (the filter
    /// policy in [`super::route`] has already widened it for a filter).
    /// Always answers: every allowed record is in some cluster.
    fn search<'s>(
        &self,
        view: &SegmentView<'s>,
        params: &QueryParams,
        query: &[f32],
        top: &mut TopK<'s>,
        stats: &mut ScanStats,
    ) -> bool {
        let (metric, mask, seg) = (params.metric, view.mask, view.segment);
        let (vectors, ordinal) = (seg.vectors(), view.ordinal);
        let nlist = self.nlist();
        let probes = params.nprobe.clamp(1, nlist);
        let mut order: Vec<(f32, usize)> = (0..nlist)
            .map(|c| (distance(probe_metric(metric), query, self.centroid(c)), c))
            .collect();
        if probes < nlist {
            order.select_nth_unstable_by(probes - 1, |a, b| a.0.total_cmp(&b.0));
            order.truncate(probes);
        }
        stats.segments += 1;
        let d = self.dims;
        let mut compared = 0;
        for (_, c) in order {
            for i in self.starts[c] as usize..self.starts[c + 1] as usize {
                if !mask[i] {
                    continue;
                }
                compared += 1;
                let dist = distance(metric, query, &vectors[i * d..(i + 1) * d]);
                if dist <= top.threshold() {
                    top.push(Candidate {
                        distance: dist,
                        id: seg.id(i),
                        segment: ordinal,
                        position: i as u32,
                    });
                }
            }
        }
        stats.vectors_compared += compared;
        true
    }
}

/// Trains `nlist` (default `√n`) lists over `records` and groups them:
/// returns the centroids and each list's records, lists ordered so that
/// lists with nearby centroids sit next to each other (the centroids are
/// themselves clustered, and lists are laid out cluster by cluster). A
/// query probes lists near each other, so in a range-readable shard its
/// probed lists' bytes are few contiguous ranges.
pub(crate) fn build_lists(
    records: Vec<Prepared>,
    dims: usize,
    metric: Metric,
    nlist: Option<usize>,
) -> (Vec<f32>, Vec<Vec<Prepared>>) {
    let live = flat_vectors(&records, dims);
    let p = IvfParams {
        nlist,
        ..Default::default()
    };
    let (centroids, assign) = train(&live, dims, metric, &p);
    let lists = centroids.len() / dims;
    // Order the lists: cluster the centroids into about √lists groups.
    let groups = (lists as f64).sqrt().round().max(1.0) as usize;
    let (_, group_of) = train(
        &centroids,
        dims,
        metric,
        &IvfParams {
            nlist: Some(groups),
            sample_per_list: 256,
            ..Default::default()
        },
    );
    let mut order: Vec<usize> = (0..lists).collect();
    order.sort_by_key(|&l| (group_of[l], l));
    let mut position = vec![0usize; lists];
    for (at, &l) in order.iter().enumerate() {
        position[l] = at;
    }
    let mut out_centroids = Vec::with_capacity(centroids.len());
    for &l in &order {
        out_centroids.extend_from_slice(&centroids[l * dims..(l + 1) * dims]);
    }
    let mut out: Vec<Vec<Prepared>> = vec![Vec::new(); lists];
    for (r, c) in records.into_iter().zip(&assign) {
        out[position[*c as usize]].push(r);
    }
    (out_centroids, out)
}

/// Centroids are compared by inner product for cosine and dot (spherical
/// k-means), by Euclidean distance otherwise.
pub(crate) fn probe_metric(metric: Metric) -> Metric {
    match metric {
        Metric::Euclidean => Metric::Euclidean,
        Metric::Cosine | Metric::Dot => Metric::Dot,
    }
}

/// Trains centroids on `vectors` (`n × dims`) and assigns every record.
/// Returns the centroids (`nlist × dims`) and each record's cluster.
pub fn train(vectors: &[f32], dims: usize, metric: Metric, p: &IvfParams) -> (Vec<f32>, Vec<u32>) {
    let n = vectors.len() / dims;
    let nlist = p
        .nlist
        .unwrap_or_else(|| (n as f64).sqrt().round() as usize)
        .clamp(1, n.max(1));
    let row = |i: usize| &vectors[i * dims..(i + 1) * dims];
    let mut rng = StdRng::seed_from_u64(p.seed);
    let sample_n = (nlist * p.sample_per_list).min(n);
    let train_ids: Vec<usize> = sample(&mut rng, n, sample_n).into_vec();
    let mut centroids: Vec<f32> = train_ids[..nlist]
        .iter()
        .flat_map(|&i| row(i).iter().copied())
        .collect();
    let pm = probe_metric(metric);
    let spherical = metric != Metric::Euclidean;
    // Each row's nearest centroid (the first of equals), a tile of rows
    // at a time: the tile stays in cache while the centroids pass it.
    let nearest = |ids: &[usize], cents: &[&[f32]]| -> Vec<u32> {
        let rows: Vec<&[f32]> = ids.iter().map(|&i| row(i)).collect();
        let mut best = vec![(f32::INFINITY, 0u32); ids.len()];
        super::distances_in_order(pm, &rows, cents, |r, c, dist| {
            if dist < best[r].0 {
                best[r] = (dist, c as u32);
            }
        });
        best.into_iter().map(|(_, c)| c).collect()
    };
    let tile = super::tile_rows(dims);
    for _ in 0..p.iterations {
        let cents: Vec<&[f32]> = centroids.chunks_exact(dims).collect();
        let assign: Vec<u32> = train_ids
            .par_chunks(tile)
            .flat_map_iter(|ids| nearest(ids, &cents))
            .collect();
        let mut sums = vec![0f64; nlist * dims];
        let mut counts = vec![0usize; nlist];
        for (&i, &c) in train_ids.iter().zip(&assign) {
            counts[c as usize] += 1;
            let s = &mut sums[c as usize * dims..(c as usize + 1) * dims];
            for (acc, x) in s.iter_mut().zip(row(i)) {
                *acc += f64::from(*x);
            }
        }
        for c in 0..nlist {
            let cent = &mut centroids[c * dims..(c + 1) * dims];
            if counts[c] == 0 {
                // Reseed an empty cluster with a random training point.
                let i = train_ids[rand::Rng::random_range(&mut rng, 0..train_ids.len())];
                cent.copy_from_slice(row(i));
                continue;
            }
            for (x, s) in cent.iter_mut().zip(&sums[c * dims..(c + 1) * dims]) {
                *x = (*s / counts[c] as f64) as f32;
            }
            if spherical {
                let norm = cent.iter().map(|x| x * x).sum::<f32>().sqrt();
                if norm > 0.0 {
                    cent.iter_mut().for_each(|x| *x /= norm);
                }
            }
        }
    }
    let all: Vec<usize> = (0..n).collect();
    let cents: Vec<&[f32]> = centroids.chunks_exact(dims).collect();
    let assign = all
        .par_chunks(tile)
        .flat_map_iter(|ids| nearest(ids, &cents))
        .collect();
    (centroids, assign)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialization_round_trips_and_rejects_garbage() {
        let ix = IvfIndex {
            dims: 2,
            centroids: vec![1.0, 0.0, 0.0, 1.0],
            starts: vec![0, 3, 5],
        };
        let b = ix.to_bytes();
        assert_eq!(IvfIndex::from_bytes(&b, 2, 5).unwrap(), ix);
        assert!(IvfIndex::from_bytes(&b, 3, 5).is_err(), "wrong dims");
        assert!(
            IvfIndex::from_bytes(&b, 2, 6).is_err(),
            "wrong record count"
        );
        assert!(IvfIndex::from_bytes(&b[..b.len() - 1], 2, 5).is_err());
        assert!(IvfIndex::from_bytes(b"HNW1....", 2, 5).is_err());
    }

    #[test]
    fn training_separates_obvious_clusters() {
        // Two tight blobs far apart: every record lands with its blob.
        let mut v = Vec::new();
        for i in 0..100 {
            let off = if i < 50 { 0.0 } else { 100.0 };
            v.extend_from_slice(&[off + (i % 7) as f32 * 0.01, off]);
        }
        let p = IvfParams {
            nlist: Some(2),
            ..Default::default()
        };
        let (_, assign) = train(&v, 2, Metric::Euclidean, &p);
        assert!(assign[..50].iter().all(|&c| c == assign[0]));
        assert!(assign[50..].iter().all(|&c| c == assign[50]));
        assert_ne!(assign[0], assign[50]);
    }

    /// Training compares a tile of rows with each centroid in turn; every
    /// row still gets its nearest centroid (the first of equals), as a
    /// row-by-row scan gives it. Duplicate rows make exact ties.
    #[test]
    fn tiled_assignment_gives_each_row_its_nearest_centroid() {
        use rand::{Rng, SeedableRng};
        let mut rng = StdRng::seed_from_u64(11);
        for (dims, metric) in [(7, Metric::Euclidean), (40, Metric::Cosine), (300, Metric::Dot)] {
            let n = 1_500;
            let mut v: Vec<f32> = (0..n * dims).map(|_| rng.random_range(-1.0..1.0)).collect();
            v.copy_within(0..100 * dims, 100 * dims);
            let p = IvfParams {
                nlist: Some(37),
                ..Default::default()
            };
            let (cents, assign) = train(&v, dims, metric, &p);
            assert!(super::super::tile_rows(dims) > 1);
            let pm = probe_metric(metric);
            for (i, row) in v.chunks_exact(dims).enumerate() {
                let mut best = (f32::INFINITY, 0u32);
                for (c, cv) in cents.chunks_exact(dims).enumerate() {
                    let d = distance(pm, row, cv);
                    if d < best.0 {
                        best = (d, c as u32);
                    }
                }
                assert_eq!(assign[i], best.1, "row {i} at {dims}-d");
            }
        }
    }
}
