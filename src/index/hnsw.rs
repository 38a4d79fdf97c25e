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

use super::{distance, Candidate, QueryParams, ScanStats, SegmentView, TopK};
use crate::coord::Metric;

pub const TAG: &[u8; 4] = b"HNW1";

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
pub struct HPoint {
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

    pub fn from_bytes(b: &[u8], records: usize) -> Result<Self, String> {
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
        let map: HnswMap<HPoint, u32> = opts
            .deserialize(&b[12..])
            .map_err(|e| format!("HNSW index does not decode: {e}"))?;
        if map.values.len() != records || map.values.iter().any(|v| *v as usize >= records) {
            return Err("HNSW index values do not match the segment".into());
        }
        Ok(HnswIndex { map, records })
    }

    /// Walks the graph; pushes the allowed candidates and returns true if
    /// that gave `k` of them (or every allowed record). Pushes nothing and
    /// returns false otherwise, so the caller can scan exactly instead.
    pub fn search<'s>(
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
                id: &seg.ids[pos],
                segment: view.ordinal,
                position: pos as u32,
            });
        }
        true
    }
}
