//! Building routed shards (DESIGN section 12): rows assigned to the
//! clusters of the index's one routing, each cluster's RaBitQ codes taken
//! against the routing's centroid, laid out by [`crate::segment::routed`].
//! Nothing is trained here: the routing was, once.

use std::collections::BTreeMap;

use rayon::prelude::*;

use super::build::BuiltShard;
use crate::index::rabitq::ex::code_bits;
use crate::index::rabitq::{row_bytes, ListCodes, Rotation};
use crate::index::routing::Routing;
use crate::record::{flat_vectors, Prepared};
use crate::segment::routed::{encode_routed, ClusterRows, RoutedMeta};
use crate::vocab::Analyzer;

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

/// A cluster's code block against its routing centroid, with the bits
/// per dimension the dimension gets.
pub(crate) fn cluster_codes(routing: &Routing, rot: &Rotation, cluster: u32, rows: &[Prepared]) -> Vec<u8> {
    let d = routing.head.dimensions;
    let bits = code_bits(d);
    ListCodes::encode(rot, routing.centroid(cluster), &flat_vectors(rows, d), bits).to_bytes()
}

/// Code blocks already known, by cluster: each exactly its cluster's
/// rows, in order, as [`cluster_codes`] would encode them (gathered from
/// shards of the same routing by a merge).
pub(crate) type KnownCodes = BTreeMap<u32, Vec<u8>>;

/// Encodes `clusters` (ascending, each with its rows) into routed shards
/// of about `cap` rows at most: consecutive clusters fill a shard until
/// the next would overflow it (a cluster is never split, so a cluster
/// larger than `cap` makes a shard of its own). A cluster in `known`
/// takes its code block from there; the others are encoded. CPU-bound.
pub(crate) fn build_routed(
    clusters: Vec<(u32, Vec<Prepared>)>,
    mut known: KnownCodes,
    routing: &Routing,
    created_at_ms: u64,
    writer_id: &str,
    cap: usize,
    text: &[(String, Analyzer)],
) -> Vec<BuiltShard> {
    let d = routing.head.dimensions;
    let rot = Rotation::new(d);
    let known: Vec<Option<Vec<u8>>> = clusters.iter().map(|(c, _)| known.remove(c)).collect();
    let codes: Vec<Vec<u8>> = clusters
        .par_iter()
        .zip(known)
        .map(|((c, rows), known)| {
            let centroid = routing.centroid(*c);
            match known {
                Some(b) if ListCodes::block_matches(&b, centroid, rows.iter().map(|r| r.vector.as_slice()), code_bits(d)) => b,
                Some(_) => {
                    tracing::warn!(cluster = c, "gathered codes do not match the cluster's rows: encoding them again");
                    cluster_codes(routing, &rot, *c, rows)
                }
                None => cluster_codes(routing, &rot, *c, rows),
            }
        })
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
        let meta = RoutedMeta {
            dims: d,
            metric: routing.head.metric,
            created_at_ms,
            writer_id,
            generation: routing.head.generation,
            code_bits: code_bits(d),
            code_row_bytes: row_bytes(d, code_bits(d)),
            text,
        };
        let enc = encode_routed(&meta, &input);
        out.push(BuiltShard {
            bytes: enc.bytes,
            rows: rows as u64,
            head_bytes: enc.head_bytes,
        });
        start = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::segment::routed::decode_routed;
    use crate::vocab::Metric;

    const D: usize = 16;

    #[test]
    fn rows_land_in_their_cluster_and_shards_respect_the_cap() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let centres: Vec<Vec<f32>> = (0..30)
            .map(|_| (0..D).map(|_| rng.random_range(-3.0..3.0)).collect())
            .collect();
        let rows: Vec<Prepared> = (0..6000)
            .map(|i| Prepared {
                id: format!("r{i}"),
                vector: centres[i % 30].iter().map(|c| c + rng.random_range(-0.5..0.5)).collect(),
                metadata: format!("{{\"i\":{i}}}").into_bytes(),
                tombstone: false,
            })
            .collect();
        let routing = Routing::train(&flat_vectors(&rows, D), D, Metric::Euclidean, 30_000, 4);
        let clusters = group_by_cluster(rows.clone(), &routing);
        assert!(clusters.windows(2).all(|w| w[0].0 < w[1].0), "ascending");
        let largest = clusters.iter().map(|(_, r)| r.len()).max().unwrap();
        let cap = 1500;
        let built = build_routed(clusters, KnownCodes::new(), &routing, 99, "indexer", cap, &[]);
        assert!(built.len() >= 4, "{} shards", built.len());
        let rot = Rotation::new(D);
        let mut seen = HashSet::new();
        for b in &built {
            let (head, seg, codes) = decode_routed("k", &b.bytes).unwrap();
            assert_eq!(head.rows, b.rows);
            assert_eq!(head.generation, 4);
            assert!(b.rows as usize <= cap.max(largest), "{} rows", b.rows);
            for (i, c) in head.clusters.iter().enumerate() {
                let range = c.start as usize..(c.start + u64::from(c.rows)) as usize;
                let members: Vec<Prepared> = range
                    .clone()
                    .map(|r| seg.prepared(r))
                    .collect();
                // Every row sits in the cluster the routing assigns it...
                let assigned = routing.assign(&flat_vectors(&members, D));
                assert!(assigned.iter().all(|a| *a == c.cluster));
                // ...with its codes taken against that cluster's centroid.
                assert_eq!(codes[i], cluster_codes(&routing, &rot, c.cluster, &members));
                for m in members {
                    assert_eq!(m.metadata, rows[m.id[1..].parse::<usize>().unwrap()].metadata);
                    assert!(seen.insert(m.id), "each row once");
                }
            }
        }
        assert_eq!(seen.len(), rows.len());
    }
}
