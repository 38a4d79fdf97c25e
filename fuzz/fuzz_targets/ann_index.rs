//! ANN index sections (IVF lists, HNSW graphs) on arbitrary bytes, inside
//! an otherwise valid segment: parsing must refuse what does not fit the
//! segment, and searching what it accepts must never panic or return a
//! record the mask excludes.
//!
//! Input: dims byte, records byte, metric byte, mask byte, then the index
//! section.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal::coord::Metric;
use shoal::index::{AnnIndex, QueryParams, ScanStats, SegmentSearch, SegmentView, TopK};
use shoal::segment::{decode_segment, encode_segment, SegmentHeader, FORMAT_VERSION};

fuzz_target!(|data: &[u8]| {
    let [dims, records, metric, mask_bits, index @ ..] = data else {
        return;
    };
    let (d, n) = (1 + usize::from(*dims % 8), usize::from(*records % 48));
    let metric = [Metric::Cosine, Metric::Euclidean, Metric::Dot][usize::from(*metric % 3)];
    let header = SegmentHeader {
        format_version: FORMAT_VERSION,
        dimensions: d as u32,
        metric,
        record_count: n as u64,
        created_at_ms: 0,
        writer_id: "fuzz".into(),
        has_index: true,
    };
    let records = shoal_fuzz::records(n, d);
    let bytes = encode_segment(&header, &records, Some(index));
    let seg = decode_segment("fuzz.seg", &bytes).expect("a valid segment decodes");
    let Ok(ix) = AnnIndex::parse(seg.index_bytes().unwrap_or_default(), d, n) else {
        return;
    };
    // Every record allowed, or those the mask byte picks (a filter).
    for pick in [u8::MAX, *mask_bits] {
        let mask: Vec<bool> = (0..n).map(|i| pick >> (i % 8) & 1 == 1).collect();
        let allowed = mask.iter().filter(|m| **m).count();
        let view = SegmentView {
            segment: &seg,
            mask: &mask,
            selectivity: allowed as f64 / n.max(1) as f64,
            ordinal: 0,
        };
        for (k, nprobe) in [(1, 1), (10, 2), (64, 1000)] {
            let params = QueryParams {
                metric,
                k,
                nprobe,
                exact: false,
            };
            let query: Vec<f32> = seg.vector(n.saturating_sub(1).min(n)).to_vec();
            let query = if query.is_empty() {
                vec![0.25; d]
            } else {
                query
            };
            let mut top = TopK::new(k);
            ix.search(&view, &params, &query, &mut top, &mut ScanStats::default());
            let found = top.into_sorted();
            assert!(found.len() <= k.min(allowed));
            assert!(found.iter().all(|c| mask[c.position as usize]));
        }
    }
});
