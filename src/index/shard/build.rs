//! Building a shard: IVF lists over the rows, a RaBitQ code block per
//! list, the range-readable layout.

use rayon::prelude::*;

use crate::index::ivf::build_lists;
use crate::index::rabitq::ex::code_bits;
use crate::index::rabitq::{ListCodes, Rotation};
use crate::record::{flat_vectors, Prepared};
use crate::segment::shard::encode_shard;
use crate::segment::{SegmentHeader, Shape};

/// One encoded shard object.
pub(crate) struct BuiltShard {
    pub bytes: bytes::Bytes,
    pub rows: u64,
    /// Length of the head region a reader fetches first.
    pub head_bytes: u64,
}

/// Encodes `rows` into range-readable shards of at most `cap` rows each:
/// IVF lists (`nlist`, or a size-derived default), RaBitQ codes per list
/// (bits per dimension from the dimension, [`code_bits`]),
/// rows addressable one by one. CPU-bound.
pub(crate) fn build(
    rows: Vec<Prepared>,
    shape: Shape,
    nlist: Option<usize>,
    cap: usize,
    header: &SegmentHeader,
) -> Vec<BuiltShard> {
    let bits = code_bits(shape.dimensions);
    build_with_bits(rows, shape, nlist, cap, header, bits)
}

/// [`build`] with `bits` bits per dimension in the codes.
pub(crate) fn build_with_bits(
    rows: Vec<Prepared>,
    shape: Shape,
    nlist: Option<usize>,
    cap: usize,
    header: &SegmentHeader,
    bits: u8,
) -> Vec<BuiltShard> {
    let mut outs = Vec::new();
    let mut rows = rows;
    while !rows.is_empty() {
        let rest = rows.split_off(rows.len().min(cap.max(1)));
        let n = rows.len() as u64;
        let (centroids, lists) = build_lists(rows, shape.dimensions, shape.metric, nlist);
        let groups: Vec<&[Prepared]> = lists.iter().map(|g| g.as_slice()).collect();
        let h = SegmentHeader {
            record_count: n,
            ..header.clone()
        };
        let codes = list_codes(&centroids, &groups, shape.dimensions, bits);
        let enc = encode_shard(&h, &centroids, &groups, &codes, bits);
        outs.push(BuiltShard {
            bytes: enc.bytes,
            rows: n,
            head_bytes: enc.head_bytes,
        });
        rows = rest;
    }
    outs
}

/// Each list's RaBitQ code block of `bits` bits per dimension, tombstones
/// coded as zero vectors (never live, so never searched).
fn list_codes(centroids: &[f32], groups: &[&[Prepared]], d: usize, bits: u8) -> Vec<Vec<u8>> {
    let rot = Rotation::new(d);
    // Lists encode independently; multi-bit codes cost a scale search per
    // row, so they take the cores as the k-means does.
    groups
        .par_iter()
        .enumerate()
        .map(|(l, g)| {
            let flat = flat_vectors(g, d);
            let c = &centroids[l * d..(l + 1) * d];
            ListCodes::encode(&rot, c, &flat, bits).to_bytes()
        })
        .collect()
}
