//! Building routed shards (DESIGN section 12): rows assigned to the
//! clusters of the index's one routing, each cluster's RaBitQ codes taken
//! against the routing's centroid, laid out by [`crate::segment::routed`].
//! Nothing is trained here: the routing was, once.

use std::collections::BTreeMap;

use rayon::prelude::*;

use super::build::BuiltShard;
use crate::index::rabitq::{row_bytes, ListCodes, Rotation};
use crate::index::routing::Routing;
use crate::record::{flat_vectors, Prepared};
use crate::segment::routed::{encode_routed, ClusterRows};

/// Each cluster's rows, clusters ascending (rows in the order given).
pub(crate) fn group_by_cluster(rows: Vec<Prepared>, routing: &Routing) -> Vec<(u32, Vec<Prepared>)> {
    let d = routing.head.dimensions;
    let assigned = routing.assign(&flat_vectors(&rows, d));
    let mut by: BTreeMap<u32, Vec<Prepared>> = BTreeMap::new();
    for (r, c) in rows.into_iter().zip(assigned) {
        by.entry(c).or_default().push(r);
    }
    by.into_iter().collect()
}

/// A cluster's code block against its routing centroid.
pub(crate) fn cluster_codes(routing: &Routing, rot: &Rotation, cluster: u32, rows: &[Prepared]) -> Vec<u8> {
    let d = routing.head.dimensions;
    ListCodes::encode(rot, routing.centroid(cluster), &flat_vectors(rows, d)).to_bytes()
}

/// Encodes `clusters` (ascending, each with its rows) into routed shards
/// of about `cap` rows at most: consecutive clusters fill a shard until
/// the next would overflow it (a cluster is never split, so a cluster
/// larger than `cap` makes a shard of its own). CPU-bound.
pub(crate) fn build_routed(
    clusters: Vec<(u32, Vec<Prepared>)>,
    routing: &Routing,
    created_at_ms: u64,
    writer_id: &str,
    cap: usize,
) -> Vec<BuiltShard> {
    let d = routing.head.dimensions;
    let rot = Rotation::new(d);
    let codes: Vec<Vec<u8>> = clusters
        .par_iter()
        .map(|(c, rows)| cluster_codes(routing, &rot, *c, rows))
        .collect();
    let mut out = Vec::new();
    let mut start = 0;
    while start < clusters.len() {
        let mut end = start;
        let mut rows = 0;
        while end < clusters.len() && (end == start || rows + clusters[end].1.len() <= cap) {
            rows += clusters[end].1.len();
            end += 1;
        }
        let input: Vec<ClusterRows<'_>> = (start..end)
            .map(|i| ClusterRows {
                cluster: clusters[i].0,
                rows: &clusters[i].1,
                codes: codes[i].clone(),
            })
            .collect();
        let enc = encode_routed(
            d,
            routing.head.metric,
            created_at_ms,
            writer_id,
            routing.head.generation,
            row_bytes(d),
            &input,
        );
        out.push(BuiltShard {
            bytes: enc.bytes,
            rows: rows as u64,
            head_bytes: enc.head_bytes,
        });
        start = end;
    }
    out
}
