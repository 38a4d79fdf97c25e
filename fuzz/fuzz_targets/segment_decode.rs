//! The segment decoder on arbitrary bytes, as stored and with every
//! checksum resealed: it must return a `SegmentError` naming the key or a
//! segment whose accessors and searches all work, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal::coord::Metric;
use shoal::index::{AnnIndex, ExactScan, QueryParams, ScanStats, SegmentSearch, SegmentView, TopK};
use shoal::segment::{decode_segment, Segment};

const KEY: &str = "vectors/p007/fuzz.seg";

fuzz_target!(|data: &[u8]| {
    exercise(data);
    let mut sealed = data.to_vec();
    shoal_fuzz::reseal(&mut sealed);
    exercise(&sealed);
});

fn exercise(bytes: &[u8]) {
    match decode_segment(KEY, bytes) {
        Err(e) => assert_eq!(e.key(), KEY, "errors name the object"),
        Ok(seg) => use_segment(&seg),
    }
}

fn use_segment(seg: &Segment) {
    let (n, d) = (seg.len(), seg.dimensions());
    assert_eq!(seg.ids().len(), n);
    assert_eq!(seg.vectors().len(), n * d);
    for i in 0..n {
        assert_eq!(seg.vector(i).len(), d);
        let _ = seg.metadata(i);
        let _ = seg.metadata_raw(i);
        let _ = seg.is_tombstone(i);
        assert!(seg.find_last(seg.id(i)).is_some_and(|j| j >= i));
    }
    let _ = (
        seg.metadata_maps().len(),
        seg.tombstone_count(),
        seg.memory_bytes(),
    );

    let mask: Vec<bool> = (0..n).map(|i| !seg.is_tombstone(i)).collect();
    let view = SegmentView {
        segment: seg,
        mask: &mask,
        selectivity: 1.0,
        ordinal: 0,
    };
    let query: Vec<f32> = (0..d).map(|i| (i % 7) as f32 - 3.0).collect();
    let index = seg
        .index_bytes()
        .and_then(|b| AnnIndex::parse(b, d, n).ok());
    for metric in [Metric::Cosine, Metric::Euclidean, Metric::Dot] {
        for (nprobe, exact) in [(1, true), (1, false), (1000, false)] {
            let params = QueryParams {
                metric,
                k: 5,
                nprobe,
                exact,
            };
            let mut top = TopK::new(params.k);
            let mut stats = ScanStats::default();
            match &index {
                Some(ix) => ix.search(&view, &params, &query, &mut top, &mut stats),
                None => ExactScan.search(&view, &params, &query, &mut top, &mut stats),
            }
            let found = top.into_sorted();
            assert!(found.len() <= params.k);
            assert!(found.iter().all(|c| mask[c.position as usize]));
        }
    }
}
