//! One routing for the whole index (DESIGN section 12): cluster centroids
//! trained once from a sample, immutable, two levels so a reader holds
//! only the top and fetches the rest by range.
//!
//! The routing's clusters are split into *groups*: the top level is one
//! centroid per group, and each group's block holds its clusters'
//! centroids. Cluster ids run through the groups in order, so a group's
//! clusters are consecutive ids; training numbers groups, and each
//! group's clusters, so that those near each other in space are near
//! each other in id (`order`), and a shard that lays clusters out by id
//! puts a query's probed clusters in fewer shards and fewer ranges.
//!
//! Training is hierarchical k-means (the groups over the sample, then
//! each group's clusters over its part of the sample), so it costs
//! `sample × (groups + clusters / groups)` distance computations per
//! iteration instead of `sample × clusters`. Routing a vector (a query's
//! probes, a row's cluster) looks at the nearest groups first and ranks
//! only their clusters: a beam over the top level.
//!
//! # Object layout
//!
//! All integers little-endian; `index/routing/<generation>-<token>.routing`.
//!
//! ```text
//! prefix  magic "SHOALRTE" (8) | version u16 | reserved (6) |
//!         head length u64 | xxh3-64 of the head
//! head    dimensions u32 | metric u8 | reserved (1) |
//!         calibrated probes u16 (0: none) | generation u64 |
//!         trained-for rows u64 | clusters u32 | groups u32 |
//!         top centroids (groups × dimensions f32) |
//!         per group: first cluster u32, clusters u32,
//!                    block offset u64, block length u64, xxh3-64
//! blocks  per group: its clusters' centroids, either
//!           f32:  clusters × dimensions f32, or
//!           u8:   per cluster: lo f32 | step f32 | dimensions × u8
//!                 (version 2 only)
//! end     magic "SHOALEND" (8)
//! ```
//!
//! A block's length tells its encoding (`dimensions × 4` or
//! `8 + dimensions` bytes per cluster: never equal). In a `u8` block,
//! centroid `c` of group `g` *is* `top[g] + (lo + step × code)`
//! coordinate by coordinate, in f32: training snaps its centroids to
//! what the block decodes to, so the indexer assigns rows and encodes
//! their residuals against exactly the vectors a reader decodes. A
//! group's centroids are stored as `u8` when that moves none of them by
//! more than [`SNAP_TOLERANCE`] of the distance to its nearest sibling
//! (which keeps each cluster's cell), else as f32: at 384 dimensions a
//! block is a quarter the size, and a cold query over a routing read by
//! range fetches a quarter of the bytes for its groups. Version 1
//! objects (f32 blocks only) are read as before.
//!
//! A reader fetches the prefix and head (one ranged GET of
//! [`RoutingHead::region_len`] bytes, or the whole object when it is
//! small) and each group block it needs, checking every part against
//! its checksum.

use rayon::prelude::*;
use xxhash_rust::xxh3::xxh3_64;

use super::{distance, distances_in_order};
use super::ivf::{probe_metric, train, IvfParams};
use crate::vocab::Metric;

const MAGIC: &[u8; 8] = b"SHOALRTE";
const END: &[u8; 8] = b"SHOALEND";
/// The version written; [`READS`] the versions read.
const VERSION: u16 = 2;
const READS: std::ops::RangeInclusive<u16> = 1..=2;
const PREFIX_LEN: usize = 32;
const FIXED_HEAD_LEN: usize = 4 + 1 + 3 + 8 + 8 + 4 + 4;
const GROUP_ENTRY_LEN: usize = 4 + 4 + 8 + 8 + 8;

/// Rows a cluster is trained to hold. Smaller clusters route a query
/// more precisely for the codes it scans (the shared set at ~34k codes
/// per query: recall@10 0.970 with clusters of 1,000 rows, 0.989 with
/// 250; the 250k noisy-copy set: 0.908 and 0.969) at the price of a
/// bigger routing (4,000 centroids per million rows) and more, smaller
/// probe blocks, which adjacent cluster ids keep to few requests.
pub(crate) const TARGET_CLUSTER_ROWS: usize = 250;
/// Clusters a query probes per `nprobe`: at the default `nprobe` of 8,
/// 128 clusters of about [`TARGET_CLUSTER_ROWS`] rows (~32k codes),
/// whatever the size of the index.
pub(crate) const PROBES_PER_NPROBE: usize = 16;
/// Training rows per cluster (the sample is at most this many times the
/// cluster count).
const SAMPLE_PER_CLUSTER: usize = 48;
/// Fewest training rows per cluster: a smaller sample trains fewer,
/// bigger clusters than the rows ask for.
const MIN_TRAIN_PER_CLUSTER: usize = 8;
/// Rows a routing is trained on: at least this many (when there are)...
const MIN_SAMPLE: usize = 100_000;
/// ...and at most this many: enough for [`MIN_TRAIN_PER_CLUSTER`] rows in
/// each of the clusters of an index of 8M rows (393 MB at 384
/// dimensions); past that, clusters grow with the index.
const MAX_SAMPLE: usize = 256_000;
/// Groups whose clusters a row is routed among when it is assigned. A
/// row whose nearest cluster lies outside them lands where a query may
/// not probe: on the 1M noisy-copy set (63 groups), recall@10 0.9580
/// with 4, 0.9685 with 8, 0.9800 with 16, for a forced build of 123,
/// 142 and 179 s.
const ASSIGN_BEAM: usize = 8;
/// Lloyd rounds over the whole sample after the hierarchical training.
const REFINE_ROUNDS: usize = 2;
/// A group's centroids are stored as `u8` codes when snapping them moves
/// each by at most this share of the distance to its nearest sibling in
/// the group: the boundary of its cell (the rows nearer it than any
/// sibling) moves by at most half that. A code's error is about 0.7 %
/// of the centroid's offset from its group's top centroid (a step of
/// 1/255 of the offsets' range), and neighbouring clusters sit a few
/// times closer to each other than to that top: real data snaps with
/// room to spare, while a coordinate that spans far more than the gap
/// between two clusters keeps the group in f32.
const SNAP_TOLERANCE: f32 = 0.25;

/// Rows [`Routing::assign`] takes a group at a time: enough that each
/// group's centroids serve many rows while cached, few enough that the
/// rows (1.5 MB at 384-d) stay in a core's cache too.
const ASSIGN_BATCH: usize = 1024;

/// A group of the top level: its clusters and where their centroids are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Group {
    pub first: u32,
    pub clusters: u32,
    pub offset: u64,
    pub len: u64,
    pub checksum: u64,
}

impl Group {
    pub(crate) fn range(&self) -> std::ops::Range<u64> {
        self.offset..self.offset + self.len
    }

    /// Whether its block holds `u8` codes (else f32 centroids).
    pub(crate) fn snapped(&self, dims: usize) -> bool {
        self.len == u64::from(self.clusters) * snapped_len(dims) as u64
    }
}

/// Bytes of one cluster's centroid in a `u8` block.
fn snapped_len(dims: usize) -> usize {
    8 + dims
}

/// The part of a routing every reader holds: the top level.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct RoutingHead {
    /// The object's format version.
    pub version: u16,
    pub dimensions: usize,
    pub metric: Metric,
    pub generation: u64,
    /// How many rows the routing was sized for.
    pub trained_rows: u64,
    /// Clusters a query must probe on this data for recall@10 ≥ 0.95,
    /// measured when trained (`calibrate`): readers probe at least
    /// this many at the default `nprobe`. 0: not measured (a small
    /// sample), the default probes hold.
    pub calibrated_probes: u32,
    pub clusters: u32,
    /// `groups × dimensions`.
    pub top: Vec<f32>,
    pub groups: Vec<Group>,
}

/// A whole routing: the head and every group's centroids (what the
/// indexer assigns rows with).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Routing {
    pub head: RoutingHead,
    /// `clusters × dimensions`, by cluster id, as the blocks decode.
    pub centroids: Vec<f32>,
    /// The groups' blocks, in order, as stored.
    body: Vec<u8>,
}

/// Why a routing object (or part of one) cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct RoutingError(pub String);

fn bad(m: impl Into<String>) -> RoutingError {
    RoutingError(m.into())
}

impl RoutingHead {
    /// Clusters a query probes at `nprobe` over shards holding `rows`
    /// live rows: [`PROBES_PER_NPROBE`] per `nprobe`, or more when the
    /// calibration found this data needs more at the default `nprobe`
    /// (its neighbours spread over more clusters); fewer in proportion
    /// when the shards hold more rows than the routing was trained for
    /// (its clusters have grown; the indexer trains a new routing before
    /// they double), so the codes a query scans stay flat.
    pub(crate) fn probes(&self, nprobe: usize, rows: u64) -> usize {
        let probes = nprobe.saturating_mul(self.probes_per_nprobe()).max(1);
        let trained = self.trained_rows.max(1);
        if rows <= trained {
            return probes;
        }
        ((probes as f64 * trained as f64 / rows as f64).ceil() as usize).max(1)
    }

    /// Clusters probed per `nprobe`: [`PROBES_PER_NPROBE`], or the
    /// calibrated probes spread over the default `nprobe` when that is
    /// more.
    pub(crate) fn probes_per_nprobe(&self) -> usize {
        let calibrated = self.calibrated_probes as usize;
        PROBES_PER_NPROBE.max(calibrated.div_ceil(crate::vocab::DEFAULT_NPROBE as usize))
    }

    pub(crate) fn groups(&self) -> usize {
        self.groups.len()
    }

    pub(crate) fn top_centroid(&self, g: usize) -> &[f32] {
        &self.top[g * self.dimensions..(g + 1) * self.dimensions]
    }

    /// Bytes of the prefix and head: what a reader fetches first.
    pub(crate) fn region_len(&self) -> u64 {
        (PREFIX_LEN + head_len(self.groups.len(), self.dimensions)) as u64
    }

    /// The group holding cluster `c`.
    #[cfg(test)]
    pub(crate) fn group_of(&self, c: u32) -> usize {
        self.groups.partition_point(|g| g.first + g.clusters <= c)
    }

    /// Groups nearest `v` first (by top centroid), with their distances.
    pub(crate) fn nearest_groups(&self, v: &[f32]) -> Vec<(f32, u32)> {
        let pm = probe_metric(self.metric);
        let mut order: Vec<(f32, u32)> = (0..self.groups())
            .map(|g| (distance(pm, v, self.top_centroid(g)), g as u32))
            .collect();
        order.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        order
    }

    /// Checks and parses group `g`'s block (bytes as
    /// [`Group::range`] addresses them): its clusters' centroids.
    pub(crate) fn group_centroids(&self, g: usize, bytes: &[u8]) -> Result<Vec<f32>, RoutingError> {
        let e = &self.groups[g];
        if bytes.len() as u64 != e.len || xxh3_64(bytes) != e.checksum {
            return Err(bad(format!("checksum mismatch in the centroids of group {g}")));
        }
        let out: Vec<f32> = if e.snapped(self.dimensions) {
            let top = self.top_centroid(g);
            bytes
                .chunks_exact(snapped_len(self.dimensions))
                .flat_map(|c| {
                    let (lo, step) = (f32_at(c, 0), f32_at(c, 4));
                    c[8..].iter().zip(top).map(move |(&q, t)| unsnap(*t, lo, step, q))
                })
                .collect()
        } else {
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                .collect()
        };
        if out.iter().any(|x| !x.is_finite()) {
            return Err(bad(format!("group {g} holds a non-finite centroid")));
        }
        Ok(out)
    }

    /// Group `g`'s block (checked by [`Self::group_centroids`]) as the
    /// codes a reader ranks by; `None` for an f32 block.
    pub(crate) fn group_rank_codes(&self, g: usize, bytes: &[u8]) -> Option<RankCodes> {
        let (e, d) = (&self.groups[g], self.dimensions);
        if !e.snapped(d) || bytes.len() as u64 != e.len {
            return None;
        }
        Some(RankCodes::new(self.top_centroid(g), bytes, d))
    }

    /// Parses the prefix and head from the first bytes of the object
    /// (at least [`Self::region_len`] of them; `Err` names how many more
    /// it needs when given fewer).
    pub(crate) fn parse(bytes: &[u8]) -> Result<Self, RoutingError> {
        if bytes.len() < PREFIX_LEN {
            return Err(bad("truncated before the end of its prefix"));
        }
        if &bytes[..8] != MAGIC {
            return Err(bad("not a routing object (bad magic)"));
        }
        let version = u16::from_le_bytes([bytes[8], bytes[9]]);
        if !READS.contains(&version) {
            return Err(bad(format!(
                "routing format version {version}, which this shoal cannot read (it reads \
                 versions {} to {}); upgrade shoal",
                READS.start(),
                READS.end()
            )));
        }
        let len = u64_at(bytes, 16) as usize;
        let sum = u64_at(bytes, 24);
        let head = bytes
            .get(PREFIX_LEN..PREFIX_LEN.saturating_add(len))
            .ok_or_else(|| bad(format!("truncated: its head needs {} bytes", PREFIX_LEN + len)))?;
        if xxh3_64(head) != sum {
            return Err(bad("checksum mismatch in the head"));
        }
        if head.len() < FIXED_HEAD_LEN {
            return Err(bad("head too short"));
        }
        let dimensions = u32_at(head, 0) as usize;
        let metric = Metric::from_code(head[4])
            .ok_or_else(|| bad(format!("unknown metric code {}", head[4])))?;
        let calibrated_probes = u32::from(u16::from_le_bytes([head[6], head[7]]));
        let generation = u64_at(head, 8);
        let trained_rows = u64_at(head, 16);
        let clusters = u32_at(head, 24);
        let ngroups = u32_at(head, 28) as usize;
        if dimensions == 0 || ngroups == 0 || clusters == 0 || ngroups > clusters as usize {
            return Err(bad(format!(
                "impossible shape: {dimensions} dimensions, {clusters} clusters in {ngroups} groups"
            )));
        }
        if head.len() != head_len(ngroups, dimensions) {
            return Err(bad("head length does not match its shape"));
        }
        let mut at = FIXED_HEAD_LEN;
        let top: Vec<f32> = head[at..at + ngroups * dimensions * 4]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect();
        if top.iter().any(|x| !x.is_finite()) {
            return Err(bad("the top level holds a non-finite centroid"));
        }
        at += ngroups * dimensions * 4;
        let body_start = (PREFIX_LEN + head.len()) as u64;
        let mut groups = Vec::with_capacity(ngroups);
        let mut next = 0u32;
        let mut next_offset = body_start;
        for g in 0..ngroups {
            let e = Group {
                first: u32_at(head, at),
                clusters: u32_at(head, at + 4),
                offset: u64_at(head, at + 8),
                len: u64_at(head, at + 16),
                checksum: u64_at(head, at + 24),
            };
            at += GROUP_ENTRY_LEN;
            let plain = e.len == u64::from(e.clusters) * dimensions as u64 * 4;
            if e.first != next
                || e.clusters == 0
                || e.offset != next_offset
                || !(plain || version >= 2 && e.snapped(dimensions))
            {
                return Err(bad(format!("group {g}'s entry does not follow the one before")));
            }
            next = e.first + e.clusters;
            next_offset = e.offset + e.len;
            groups.push(e);
        }
        if next != clusters {
            return Err(bad(format!("groups hold {next} clusters, the head says {clusters}")));
        }
        Ok(RoutingHead {
            version,
            dimensions,
            metric,
            generation,
            trained_rows,
            calibrated_probes,
            clusters,
            top,
            groups,
        })
    }
}

impl Routing {
    /// Trains a routing for an index of about `rows` rows from `sample`
    /// (`n × dims`, a uniform sample of it): about `rows /
    /// TARGET_CLUSTER_ROWS` clusters (fewer when the sample is too small
    /// to train them), in about `√clusters` groups, calibrated on rows
    /// held out of the sample (`calibrate`). Deterministic for a given
    /// sample. CPU-bound.
    pub(crate) fn train(
        sample: &[f32],
        dims: usize,
        metric: Metric,
        rows: u64,
        generation: u64,
    ) -> Routing {
        let (queries, pool) = calibrate::hold_out(sample, dims);
        let mut r = Routing::train_on(&pool, dims, metric, rows, generation);
        r.head.calibrated_probes = r.calibrate(&pool, &queries, rows);
        r
    }

    /// Rows to sample for a routing of an index of `rows` rows: enough to
    /// train every cluster it asks for (and the calibration's held-out
    /// rows), within [`MIN_SAMPLE`]..=[`MAX_SAMPLE`]. With a fixed
    /// 100,000, a routing for 4M rows trained 12,400 clusters of ~320
    /// rows instead of 16,000 of 250, and a query probing 128 of them
    /// scanned 1.5× the codes it scans at 250k rows.
    pub(crate) fn sample_size(rows: u64) -> usize {
        let wanted = clusters_for(rows).saturating_mul(MIN_TRAIN_PER_CLUSTER) + calibrate::QUERIES;
        wanted.clamp(MIN_SAMPLE, MAX_SAMPLE)
    }

    fn train_on(
        sample: &[f32],
        dims: usize,
        metric: Metric,
        rows: u64,
        generation: u64,
    ) -> Routing {
        let n = sample.len() / dims.max(1);
        assert!(n > 0 && dims > 0, "a routing needs a sample");
        let clusters = clusters_for(rows).min(n.div_ceil(MIN_TRAIN_PER_CLUSTER)).max(1);
        let ngroups = ((clusters as f64).sqrt().round() as usize).clamp(1, clusters);
        let (top, of) = train(
            sample,
            dims,
            metric,
            &IvfParams {
                nlist: Some(ngroups),
                sample_per_list: SAMPLE_PER_CLUSTER * clusters / ngroups,
                ..Default::default()
            },
        );
        let mut members: Vec<Vec<usize>> = vec![Vec::new(); ngroups];
        for (i, g) in of.iter().enumerate() {
            members[*g as usize].push(i);
        }
        // Each non-empty group gets clusters in proportion to its rows;
        // an empty group (k-means left it so) is dropped.
        let parts: Vec<(Vec<f32>, Vec<f32>)> = members
            .par_iter()
            .enumerate()
            .filter(|(_, m)| !m.is_empty())
            .map(|(g, m)| {
                let k = ((clusters * m.len()) as f64 / n as f64).round() as usize;
                let k = k.clamp(1, m.len());
                let rows: Vec<f32> = m
                    .iter()
                    .flat_map(|&i| sample[i * dims..(i + 1) * dims].iter().copied())
                    .collect();
                let (cents, _) = train(
                    &rows,
                    dims,
                    metric,
                    &IvfParams {
                        nlist: Some(k),
                        sample_per_list: SAMPLE_PER_CLUSTER,
                        ..Default::default()
                    },
                );
                (top[g * dims..(g + 1) * dims].to_vec(), cents)
            })
            .collect();
        let parts = order::in_spatial_order(parts, dims);
        let first = Routing::from_parts(dims, metric, generation, rows, parts);
        first.refined(sample, REFINE_ROUNDS)
    }

    /// Lloyd rounds over the whole sample with rows assigned as the
    /// indexer assigns them (a beam over the groups): the hierarchical
    /// training places each group's clusters from its own part of the
    /// sample only, so clusters near a group's edge are placed poorly
    /// until rows from every side are counted. A cluster no sample row
    /// reaches keeps its centroid; each group's top centroid becomes the
    /// row-weighted mean of its clusters. Deterministic. CPU-bound.
    fn refined(self, sample: &[f32], rounds: usize) -> Routing {
        let (dims, metric) = (self.head.dimensions, self.head.metric);
        let spherical = metric != Metric::Euclidean;
        let unit = |v: &mut [f32]| {
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            if spherical && norm > 0.0 {
                v.iter_mut().for_each(|x| *x /= norm);
            }
        };
        let mut r = self;
        for _ in 0..rounds {
            let assigned = r.assign(sample);
            let k = r.head.clusters as usize;
            let mut sums = vec![0f64; k * dims];
            let mut counts = vec![0u64; k];
            for (v, &c) in sample.chunks_exact(dims).zip(&assigned) {
                counts[c as usize] += 1;
                for (s, x) in sums[c as usize * dims..(c as usize + 1) * dims].iter_mut().zip(v) {
                    *s += f64::from(*x);
                }
            }
            let mut parts = Vec::with_capacity(r.head.groups());
            for (g, e) in r.head.groups.iter().enumerate() {
                let mut cents = Vec::with_capacity(e.clusters as usize * dims);
                let mut top = vec![0f64; dims];
                let mut weight = 0u64;
                for c in e.first..e.first + e.clusters {
                    let c = c as usize;
                    let mut cent: Vec<f32> = if counts[c] == 0 {
                        r.centroid(c as u32).to_vec()
                    } else {
                        let n = counts[c] as f64;
                        sums[c * dims..(c + 1) * dims].iter().map(|s| (s / n) as f32).collect()
                    };
                    unit(&mut cent);
                    for (t, x) in top.iter_mut().zip(&cent) {
                        *t += f64::from(*x) * counts[c] as f64;
                    }
                    weight += counts[c];
                    cents.extend_from_slice(&cent);
                }
                let mut top: Vec<f32> = if weight == 0 {
                    r.head.top_centroid(g).to_vec()
                } else {
                    top.iter().map(|t| (t / weight as f64) as f32).collect()
                };
                unit(&mut top);
                parts.push((top, cents));
            }
            r = Routing::from_parts(dims, metric, r.head.generation, r.head.trained_rows, parts);
        }
        r
    }

    /// A routing from its groups: each group's top centroid and its
    /// clusters' centroids, each group's snapped to `u8` codes where
    /// that keeps their cells ([`SNAP_TOLERANCE`]).
    pub(crate) fn from_parts(
        dims: usize,
        metric: Metric,
        generation: u64,
        trained_rows: u64,
        parts: Vec<(Vec<f32>, Vec<f32>)>,
    ) -> Routing {
        let blocks: Vec<(Vec<u8>, Vec<f32>)> = parts
            .par_iter()
            .map(|(top, cents)| group_block(top, cents, dims))
            .collect();
        let body_start = (PREFIX_LEN + head_len(parts.len(), dims)) as u64;
        let (mut top, mut centroids, mut groups, mut body) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut first, mut offset) = (0u32, body_start);
        for ((t, _), (bytes, cents)) in parts.into_iter().zip(blocks) {
            let count = (cents.len() / dims) as u32;
            groups.push(Group {
                first,
                clusters: count,
                offset,
                len: bytes.len() as u64,
                checksum: xxh3_64(&bytes),
            });
            first += count;
            offset += bytes.len() as u64;
            top.extend_from_slice(&t);
            centroids.extend_from_slice(&cents);
            body.extend_from_slice(&bytes);
        }
        Routing {
            head: RoutingHead {
                version: VERSION,
                dimensions: dims,
                metric,
                generation,
                trained_rows,
                calibrated_probes: 0,
                clusters: first,
                top,
                groups,
            },
            centroids,
            body,
        }
    }

    pub(crate) fn centroid(&self, c: u32) -> &[f32] {
        let d = self.head.dimensions;
        &self.centroids[c as usize * d..(c as usize + 1) * d]
    }

    /// The object's bytes.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let h = &self.head;
        let d = h.dimensions;
        let mut head = Vec::with_capacity(head_len(h.groups(), d));
        head.extend_from_slice(&(d as u32).to_le_bytes());
        head.push(h.metric.code());
        head.push(0);
        let calibrated = u16::try_from(h.calibrated_probes).unwrap_or(u16::MAX);
        head.extend_from_slice(&calibrated.to_le_bytes());
        head.extend_from_slice(&h.generation.to_le_bytes());
        head.extend_from_slice(&h.trained_rows.to_le_bytes());
        head.extend_from_slice(&h.clusters.to_le_bytes());
        head.extend_from_slice(&(h.groups() as u32).to_le_bytes());
        for x in &h.top {
            head.extend_from_slice(&x.to_le_bytes());
        }
        for g in &h.groups {
            head.extend_from_slice(&g.first.to_le_bytes());
            head.extend_from_slice(&g.clusters.to_le_bytes());
            head.extend_from_slice(&g.offset.to_le_bytes());
            head.extend_from_slice(&g.len.to_le_bytes());
            head.extend_from_slice(&g.checksum.to_le_bytes());
        }
        let mut out = Vec::with_capacity(PREFIX_LEN + head.len() + self.body.len() + 8);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&h.version.to_le_bytes());
        out.extend_from_slice(&[0; 6]);
        out.extend_from_slice(&(head.len() as u64).to_le_bytes());
        out.extend_from_slice(&xxh3_64(&head).to_le_bytes());
        out.extend_from_slice(&head);
        out.extend_from_slice(&self.body);
        out.extend_from_slice(END);
        out
    }

    /// Parses a whole routing object.
    pub(crate) fn decode(bytes: &[u8]) -> Result<Routing, RoutingError> {
        let head = RoutingHead::parse(bytes)?;
        let end = head.groups.last().map_or(0, |g| g.offset + g.len) as usize;
        if bytes.len() != end + END.len() || &bytes[end..] != END {
            return Err(bad("truncated or trailing bytes after the last group"));
        }
        let mut centroids = Vec::with_capacity(head.clusters as usize * head.dimensions);
        for (g, e) in head.groups.iter().enumerate() {
            let r = e.range();
            centroids.extend(head.group_centroids(g, &bytes[r.start as usize..r.end as usize])?);
        }
        let start = head.region_len() as usize;
        Ok(Routing {
            body: bytes[start..end].to_vec(),
            head,
            centroids,
        })
    }

    /// Parses a routing object the index manifest lists as generation
    /// `generation`, refusing one of another generation.
    pub(crate) fn decode_listed(bytes: &[u8], generation: u64) -> Result<Routing, RoutingError> {
        let routing = Routing::decode(bytes)?;
        if routing.head.generation != generation {
            return Err(bad(format!(
                "routing generation {} where the index manifest lists {generation}",
                routing.head.generation
            )));
        }
        Ok(routing)
    }

    /// Each vector's cluster (`vectors` is `n × dims`): the nearest
    /// cluster among those of the [`ASSIGN_BEAM`] nearest groups, as
    /// [`Routing::cluster_of`] gives it. CPU-bound, parallel, in batches
    /// of [`ASSIGN_BATCH`] rows.
    pub(crate) fn assign(&self, vectors: &[f32]) -> Vec<u32> {
        let d = self.head.dimensions;
        vectors
            .par_chunks(ASSIGN_BATCH * d)
            .flat_map_iter(|batch| self.assign_batch(batch))
            .collect()
    }

    /// [`Routing::cluster_of`] for every row of `batch`, a group at a
    /// time: each group's centroids are compared with every row whose
    /// beam reaches it while they are in cache. Row by row, each row
    /// walked its eight groups' centroids (0.8 MB at 384-d and 4,000
    /// clusters) and a 1M build waited on memory for a third of its
    /// time. Within a group, a tile of rows ([`super::tile_rows`]) meets
    /// each centroid in turn. Same distances, same order of ties, same
    /// clusters.
    fn assign_batch(&self, batch: &[f32]) -> Vec<u32> {
        let d = self.head.dimensions;
        let pm = probe_metric(self.head.metric);
        let mut reached: Vec<Vec<u32>> = vec![Vec::new(); self.head.groups()];
        for (i, v) in batch.chunks_exact(d).enumerate() {
            for &(_, g) in self.head.nearest_groups(v).iter().take(ASSIGN_BEAM) {
                reached[g as usize].push(i as u32);
            }
        }
        let mut best = vec![(f32::INFINITY, u32::MAX); batch.len() / d];
        let tile = super::tile_rows(d);
        for (e, rows) in self.head.groups.iter().zip(&reached) {
            let cents: Vec<&[f32]> = (e.first..e.first + e.clusters).map(|c| self.centroid(c)).collect();
            for rows in rows.chunks(tile) {
                let vs: Vec<&[f32]> = rows
                    .iter()
                    .map(|&i| &batch[i as usize * d..(i as usize + 1) * d])
                    .collect();
                distances_in_order(pm, &vs, &cents, |r, k, dist| {
                    let c = e.first + k as u32;
                    let b = &mut best[rows[r] as usize];
                    if dist.total_cmp(&b.0).then(c.cmp(&b.1)).is_lt() {
                        *b = (dist, c);
                    }
                });
            }
        }
        best.into_iter().map(|(_, c)| c).collect()
    }

    /// `v`'s cluster: the nearest among those of the [`ASSIGN_BEAM`]
    /// nearest groups, as the indexer assigns rows.
    pub(crate) fn cluster_of(&self, v: &[f32]) -> u32 {
        self.nearest(v, ASSIGN_BEAM, 1)[0].1
    }

    /// The `n` clusters nearest `v` among those of its `beam` nearest
    /// groups, nearest first, with their distances (by the metric
    /// centroids are compared with).
    pub(crate) fn nearest(&self, v: &[f32], beam: usize, n: usize) -> Vec<(f32, u32)> {
        let pm = probe_metric(self.head.metric);
        let groups = self.head.nearest_groups(v);
        let mut out: Vec<(f32, u32)> = groups
            .iter()
            .take(beam.max(1))
            .flat_map(|&(_, g)| {
                let e = &self.head.groups[g as usize];
                (e.first..e.first + e.clusters).map(|c| (distance(pm, v, self.centroid(c)), c))
            })
            .collect();
        keep_nearest(&mut out, n.max(1), |&(d, c)| (d, c));
        out
    }
}

/// Keeps the `n` entries of `by` nearest first, by `key`'s (distance,
/// cluster): the order every route takes clusters in. Selects before
/// sorting, so a wide beam costs its distances, not a sort of them all.
pub(crate) fn keep_nearest<T>(by: &mut Vec<T>, n: usize, key: impl Fn(&T) -> (f32, u32)) {
    let order = |a: &T, b: &T| {
        let (a, b) = (key(a), key(b));
        a.0.total_cmp(&b.0).then(a.1.cmp(&b.1))
    };
    if n < by.len() {
        by.select_nth_unstable_by(n, order);
        by.truncate(n);
    }
    by.sort_unstable_by(order);
}

/// Clusters a routing for an index of `rows` rows asks for (at least
/// one): about [`TARGET_CLUSTER_ROWS`] rows each.
fn clusters_for(rows: u64) -> usize {
    (rows as usize).div_ceil(TARGET_CLUSTER_ROWS).max(1)
}

/// A group's block and the centroids it decodes to: `u8` codes of each
/// centroid's offset from the group's top centroid `top` when that moves
/// no centroid by more than [`SNAP_TOLERANCE`] of the distance to its
/// nearest sibling, else the centroids as f32.
fn group_block(top: &[f32], cents: &[f32], dims: usize) -> (Vec<u8>, Vec<f32>) {
    let mut bytes = Vec::with_capacity(cents.len() / dims * snapped_len(dims));
    let mut snapped = Vec::with_capacity(cents.len());
    for c in cents.chunks_exact(dims) {
        let (lo, hi) = c
            .iter()
            .zip(top)
            .map(|(x, t)| x - t)
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), r| (lo.min(r), hi.max(r)));
        let step = (hi - lo) / 255.0;
        bytes.extend_from_slice(&lo.to_le_bytes());
        bytes.extend_from_slice(&step.to_le_bytes());
        for (x, t) in c.iter().zip(top) {
            let q = if step > 0.0 {
                ((x - t - lo) / step).round().clamp(0.0, 255.0) as u8
            } else {
                0
            };
            bytes.push(q);
            snapped.push(unsnap(*t, lo, step, q));
        }
    }
    let keeps_cells = snapped.iter().all(|x| x.is_finite())
        && cents.chunks_exact(dims).enumerate().all(|(i, c)| {
            let moved = super::l2_squared(c, &snapped[i * dims..(i + 1) * dims]);
            let sibling = cents
                .chunks_exact(dims)
                .enumerate()
                .filter(|&(j, _)| j != i)
                .map(|(_, o)| super::l2_squared(c, o))
                .fold(f32::INFINITY, f32::min);
            moved <= SNAP_TOLERANCE * SNAP_TOLERANCE * sibling
        });
    if keeps_cells {
        (bytes, snapped)
    } else {
        let bytes = cents.iter().flat_map(|x| x.to_le_bytes()).collect();
        (bytes, cents.to_vec())
    }
}

/// Coordinate `q` of a snapped centroid: its group's top centroid's
/// coordinate `top` plus the code's offset.
fn unsnap(top: f32, lo: f32, step: f32, q: u8) -> f32 {
    top + (lo + step * f32::from(q))
}

fn head_len(groups: usize, dims: usize) -> usize {
    FIXED_HEAD_LEN + groups * dims * 4 + groups * GROUP_ENTRY_LEN
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn f32_at(b: &[u8], at: usize) -> f32 {
    f32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

mod calibrate;
mod order;
mod rank;
pub(crate) use rank::{RankCodes, RankQuery};
#[cfg(test)]
mod tests;
