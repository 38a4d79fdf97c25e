//! HNSW index for one segment, built with instant-distance and serialized
//! (bincode) into the segment's index section.
//!
//! Know its limits (measured on the project's 2-core machine): building
//! 10,000 × 384-d costs ~7–20 CPU-seconds (100,000 took minutes), `M` is
//! fixed at 32 by the crate, `ef_search` is chosen at build time, and
//! multi-threaded builds are not reproducible. So compaction caps HNSW
//! segments at `hnswMaxSegmentRecords` and `efConstruction`/`efSearch` are
//! index settings. The graph stores its own copy of every vector, so an
//! HNSW segment is about twice the size of an exact or IVF one.
//!
//! A query walks the graph once (returning up to `efSearch` candidates),
//! keeps those the mask allows, and falls back to an exact scan when that
//! leaves fewer than `k`.

use bincode::Options;
use instant_distance::{Builder, HnswMap, Point, Search};
use serde::{Deserialize, Serialize};

use super::{distance, Built, Candidate, QueryParams, ScanStats, SegmentAnn, SegmentView, TopK};
use crate::record::{flat_vectors, Prepared};
use crate::vocab::{IndexSettings, Metric};

pub(crate) const TAG: &[u8; 4] = b"HNW1";

#[derive(Clone, Debug)]
pub struct HnswParams {
    pub ef_construction: usize,
    pub ef_search: usize,
    pub seed: u64,
}

impl Default for HnswParams {
    fn default() -> Self {
        HnswParams {
            ef_construction: 100,
            ef_search: 64,
            seed: 0x5eed,
        }
    }
}

/// A point in the graph: the vector and how to compare it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct HPoint {
    v: Vec<f32>,
    metric: u8,
}

fn metric_of(code: u8) -> Metric {
    match code {
        0 => Metric::Cosine,
        1 => Metric::Euclidean,
        _ => Metric::Dot,
    }
}

fn code_of(m: Metric) -> u8 {
    match m {
        Metric::Cosine => 0,
        Metric::Euclidean => 1,
        Metric::Dot => 2,
    }
}

impl Point for HPoint {
    fn distance(&self, other: &Self) -> f32 {
        distance(metric_of(self.metric), &self.v, &other.v)
    }
}

/// The serialized layout of `HnswMap<HPoint, u32>` in instant-distance
/// 0.6 (bincode writes fields in order and arrays without lengths, so
/// these mirror types read the same bytes). instant-distance indexes its
/// layers with the stored neighbor ids unchecked, so a graph whose checksum
/// holds but whose ids are out of range (a buggy or hostile writer; found
/// by the `segment_decode` fuzz target) would panic the reader. The shape
/// is read and checked first; only then is the real map decoded.
#[derive(Serialize, Deserialize)]
struct MapShape {
    hnsw: GraphShape,
    values: Vec<u32>,
}

#[derive(Serialize, Deserialize)]
struct GraphShape {
    ef_search: usize,
    points: Vec<HPoint>,
    /// Layer 0: up to 2·M neighbors per point (M = 32 in the crate).
    zero: Vec<ZeroShape>,
    /// Layers 1.. (bottom first): up to M neighbors per point; layer `l`
    /// holds the first `len` points, and shrinks going up.
    layers: Vec<Vec<[u32; 32]>>,
}

#[derive(Serialize, Deserialize)]
struct ZeroShape([u32; 32], [u32; 32]);

/// instant-distance's "no neighbor" id.
const NO_NEIGHBOR: u32 = u32::MAX;

impl MapShape {
    fn check(&self, dims: usize, records: usize) -> Result<(), String> {
        let g = &self.hnsw;
        // Values are segment positions: each exactly once, or a search
        // would return one record twice.
        let mut seen = vec![false; records];
        let permutation = self.values.len() == records
            && self.values.iter().all(|&v| {
                (v as usize) < records && !std::mem::replace(&mut seen[v as usize], true)
            });
        if !permutation {
            return Err("HNSW index values are not the segment's positions, each once".into());
        }
        if g.points.len() != records || g.zero.len() != records {
            return Err(format!(
                "HNSW graph has {} points and {} nodes, the segment has {records} records",
                g.points.len(),
                g.zero.len()
            ));
        }
        if let Some(p) = g.points.iter().find(|p| p.v.len() != dims || p.metric > 2) {
            return Err(format!(
                "HNSW graph holds a {}-d point (metric code {}), the segment is {dims}-d",
                p.v.len(),
                p.metric
            ));
        }
        let in_layer = |ids: &[u32], len: usize| {
            ids.iter()
                .all(|&id| id == NO_NEIGHBOR || (id as usize) < len)
        };
        if !g
            .zero
            .iter()
            .all(|z| in_layer(&z.0, records) && in_layer(&z.1, records))
        {
            return Err("HNSW layer 0 links to a point outside the graph".into());
        }
        let mut below = records;
        for (i, layer) in g.layers.iter().enumerate() {
            if layer.is_empty() || layer.len() > below {
                return Err(format!(
                    "HNSW layer {} has {} points, the layer below {below}",
                    i + 1,
                    layer.len()
                ));
            }
            if !layer.iter().all(|node| in_layer(node, layer.len())) {
                return Err(format!(
                    "HNSW layer {} links to a point outside the layer",
                    i + 1
                ));
            }
            below = layer.len();
        }
        Ok(())
    }
}

pub struct HnswIndex {
    map: HnswMap<HPoint, u32>,
    records: usize,
}

impl HnswIndex {
    /// Builds the graph over `vectors` (`n × dims`); values are positions.
    pub fn build(vectors: &[f32], dims: usize, metric: Metric, p: &HnswParams) -> Self {
        let points: Vec<HPoint> = vectors
            .chunks_exact(dims)
            .map(|v| HPoint {
                v: v.to_vec(),
                metric: code_of(metric),
            })
            .collect();
        let records = points.len();
        let values: Vec<u32> = (0..records as u32).collect();
        let map = Builder::default()
            .ef_construction(p.ef_construction)
            .ef_search(p.ef_search)
            .seed(p.seed)
            .build(points, values);
        HnswIndex { map, records }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = TAG.to_vec();
        out.extend_from_slice(&(self.records as u64).to_le_bytes());
        bincode::serialize_into(&mut out, &self.map).expect("serialize hnsw to memory");
        out
    }

    /// Parses an index section of a segment of `records` records of
    /// `dims` dimensions, refusing any graph the search could not walk.
    pub(crate) fn from_bytes(b: &[u8], dims: usize, records: usize) -> Result<Self, String> {
        if b.get(..4) != Some(TAG.as_slice()) || b.len() < 12 {
            return Err("not an HNSW index".into());
        }
        let n = u64::from_le_bytes(b[4..12].try_into().expect("8 bytes")) as usize;
        if n != records {
            return Err(format!(
                "HNSW index covers {n} records, the segment has {records}"
            ));
        }
        // bincode's limit stops a lying length prefix from allocating wildly.
        let opts = bincode::config::DefaultOptions::new()
            .with_fixint_encoding()
            .allow_trailing_bytes()
            .with_limit(b.len() as u64 * 4);
        let shape: MapShape = opts
            .deserialize(&b[12..])
            .map_err(|e| format!("HNSW index does not decode: {e}"))?;
        shape.check(dims, records)?;
        let map: HnswMap<HPoint, u32> = opts
            .deserialize(&b[12..])
            .map_err(|e| format!("HNSW index does not decode: {e}"))?;
        Ok(HnswIndex { map, records })
    }
}

impl SegmentAnn for HnswIndex {
    #[cfg(any(test, feature = "test-util"))]
    const KIND: crate::vocab::AnnKind = crate::vocab::AnnKind::Hnsw;

    /// Builds the graph; records keep their order (one group).
    fn build(records: Vec<Prepared>, dims: usize, metric: Metric, ix: &IndexSettings) -> Built {
        let p = HnswParams {
            ef_construction: ix.ef_construction as usize,
            ef_search: ix.ef_search as usize,
            ..Default::default()
        };
        let bytes = HnswIndex::build(&flat_vectors(&records, dims), dims, metric, &p).to_bytes();
        Built {
            groups: vec![records],
            bytes,
        }
    }

    fn from_bytes(bytes: &[u8], dims: usize, records: usize) -> Result<Self, String> {
        HnswIndex::from_bytes(bytes, dims, records)
    }

    /// Walks the graph; pushes the allowed candidates and returns true if
    /// that gave `k` of them (or every allowed record). Pushes nothing and
    /// returns false otherwise, so the caller can scan exactly instead.
    fn search<'s>(
        &self,
        view: &SegmentView<'s>,
        params: &QueryParams,
        query: &[f32],
        top: &mut TopK<'s>,
        stats: &mut ScanStats,
    ) -> bool {
        let seg = view.segment;
        let q = HPoint {
            v: query.to_vec(),
            metric: code_of(params.metric),
        };
        let mut search = Search::default();
        let mut found = Vec::new();
        let mut walked = 0u64;
        for item in self.map.search(&q, &mut search) {
            walked += 1;
            let pos = *item.value as usize;
            if view.mask[pos] {
                found.push(pos);
            }
        }
        stats.segments += 1;
        stats.vectors_compared += walked;
        let allowed = view.mask.iter().filter(|m| **m).count();
        if found.len() < params.k.min(allowed) {
            return false;
        }
        for pos in found {
            // Score with the same kernel as every other path.
            let dist = distance(params.metric, query, seg.vector(pos));
            top.push(Candidate {
                distance: dist,
                id: seg.id(pos),
                segment: view.ordinal,
                position: pos as u32,
            });
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(n: usize, d: usize) -> (Vec<u8>, Vec<f32>) {
        let vectors: Vec<f32> = (0..n * d)
            .map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0)
            .collect();
        let p = HnswParams {
            ef_construction: 32,
            ef_search: 16,
            seed: 7,
        };
        (
            HnswIndex::build(&vectors, d, Metric::Euclidean, &p).to_bytes(),
            vectors,
        )
    }

    fn refusal(r: Result<HnswIndex, String>) -> String {
        match r {
            Ok(_) => panic!("a forged graph was accepted"),
            Err(e) => e,
        }
    }

    /// Rewrites a serialized graph through its shape.
    fn forge(bytes: &[u8], edit: impl FnOnce(&mut MapShape)) -> Vec<u8> {
        let mut shape: MapShape =
            bincode::deserialize(&bytes[12..]).expect("shape reads a real graph");
        edit(&mut shape);
        let mut out = bytes[..12].to_vec();
        bincode::serialize_into(&mut out, &shape).expect("serialize");
        out
    }

    #[test]
    fn a_built_graph_round_trips_and_its_shape_reads_the_same_bytes() {
        let (bytes, _) = graph(300, 4);
        assert!(HnswIndex::from_bytes(&bytes, 4, 300).is_ok());
        assert_eq!(
            forge(&bytes, |_| {}),
            bytes,
            "the mirror types re-serialize identically"
        );
        let shape: MapShape = bincode::deserialize(&bytes[12..]).unwrap();
        assert!(
            !shape.hnsw.layers.is_empty(),
            "300 points give upper layers"
        );
        assert!(refusal(HnswIndex::from_bytes(&bytes, 5, 300)).contains("4-d point"));
        assert!(refusal(HnswIndex::from_bytes(&bytes, 4, 299)).contains("covers 300"));
    }

    #[test]
    fn forged_neighbor_ids_are_refused_instead_of_panicking_the_search() {
        let (bytes, _) = graph(300, 4);
        let zero = forge(&bytes, |s| s.hnsw.zero[5].0[0] = 4_127_064);
        assert!(refusal(HnswIndex::from_bytes(&zero, 4, 300)).contains("layer 0 links"));
        let upper = forge(&bytes, |s| {
            let len = s.hnsw.layers[0].len() as u32;
            s.hnsw.layers[0][0][0] = len;
        });
        assert!(refusal(HnswIndex::from_bytes(&upper, 4, 300)).contains("layer 1 links"));
        let grown = forge(&bytes, |s| s.hnsw.layers.push(vec![[NO_NEIGHBOR; 32]; 301]));
        assert!(refusal(HnswIndex::from_bytes(&grown, 4, 300)).contains("the layer below"));
        let empty = forge(&bytes, |s| s.hnsw.layers.push(Vec::new()));
        assert!(HnswIndex::from_bytes(&empty, 4, 300).is_err());
        let twice = forge(&bytes, |s| s.values[7] = s.values[8]);
        assert!(refusal(HnswIndex::from_bytes(&twice, 4, 300)).contains("each once"));
        let short = forge(&bytes, |s| {
            s.hnsw.zero.pop();
        });
        assert!(refusal(HnswIndex::from_bytes(&short, 4, 300)).contains("299 nodes"));
    }
}
