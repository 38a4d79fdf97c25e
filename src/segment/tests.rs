//! Round-trip properties and fuzz-style decoding of hostile bytes.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use xxhash_rust::xxh3::xxh3_64;

use super::*;
use crate::record::Prepared;

const KEY: &str = "vectors/p001/test.seg";

pub(super) fn header(d: u32, metric: Metric) -> SegmentHeader {
    SegmentHeader {
        format_version: FORMAT_VERSION,
        dimensions: d,
        metric,
        record_count: 0,
        created_at_ms: 1_795_000_000_000,
        writer_id: "writer-ü-1".into(),
        has_index: false,
    }
}

fn random_records(rng: &mut StdRng, n: usize, d: usize) -> Vec<Prepared> {
    (0..n)
        .map(|i| {
            if rng.random_bool(0.1) {
                Prepared::tombstone(format!("gone-{i}"))
            } else {
                let meta = if rng.random_bool(0.3) {
                    Vec::new()
                } else {
                    format!("{{\"i\":{i},\"t\":\"ключ {}\"}}", rng.random::<u32>()).into_bytes()
                };
                Prepared {
                    id: format!("id-{i}-{}", "é".repeat(rng.random_range(0..4))),
                    vector: (0..d).map(|_| rng.random_range(-1.0f32..1.0)).collect(),
                    metadata: meta,
                    tombstone: false,
                }
            }
        })
        .collect()
}

fn check_round_trip(seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let n = rng.random_range(0..300);
    let d = rng.random_range(1..64);
    let metric = [Metric::Cosine, Metric::Euclidean, Metric::Dot][rng.random_range(0..3)];
    let records = random_records(&mut rng, n, d);
    let index: Option<Vec<u8>> = rng.random_bool(0.3).then(|| {
        (0..rng.random_range(0..500))
            .map(|_| rng.random())
            .collect()
    });
    let h = header(d as u32, metric);
    // Split into 1..=4 groups at random points (as IVF clusters are).
    let mut cuts: Vec<usize> = (0..rng.random_range(0..4))
        .map(|_| rng.random_range(0..=n))
        .collect();
    cuts.sort();
    let mut groups: Vec<&[Prepared]> = Vec::new();
    let mut at = 0;
    for c in cuts.into_iter().chain([n]) {
        groups.push(&records[at..c]);
        at = c;
    }
    let bytes = encode_segment_groups(&h, &groups, index.as_deref());
    let seg = decode_segment(KEY, &bytes).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    assert_eq!(seg.len(), n, "seed {seed}");
    assert_eq!(seg.header.record_count, n as u64);
    assert_eq!(seg.header.metric, metric);
    assert_eq!(seg.header.writer_id, h.writer_id);
    assert_eq!(seg.header.has_index, index.is_some());
    assert_eq!(seg.index, index);
    for (i, r) in records.iter().enumerate() {
        assert_eq!(seg.ids[i], r.id);
        assert_eq!(seg.is_tombstone(i), r.tombstone);
        assert_eq!(seg.metadata_raw(i), &r.metadata[..]);
        if r.tombstone {
            assert!(seg.vector(i).iter().all(|x| *x == 0.0));
        } else {
            assert_eq!(seg.vector(i), &r.vector[..], "seed {seed} record {i}");
        }
    }
    let tail = decode_tail(KEY, &bytes, bytes.len() as u64).unwrap();
    assert_eq!(
        tail.entries.len(),
        4 * groups.len() + usize::from(index.is_some())
    );
}

#[test]
fn round_trip_property_over_200_random_segments() {
    for seed in 0..200 {
        check_round_trip(seed);
    }
}

#[test]
fn find_last_returns_the_newest_position() {
    let mut recs = random_records(&mut StdRng::seed_from_u64(1), 5, 3);
    recs[4] = Prepared::tombstone(recs[1].id.clone());
    let seg = decode_segment(KEY, &encode_segment(&header(3, Metric::Dot), &recs, None)).unwrap();
    assert_eq!(seg.find_last(&recs[1].id), Some(4));
    assert!(seg.is_tombstone(4));
    assert_eq!(seg.find_last("nope"), None);
}

fn sample() -> Vec<u8> {
    let recs = random_records(&mut StdRng::seed_from_u64(7), 20, 8);
    encode_segment(&header(8, Metric::Cosine), &recs, Some(b"index-bytes")).to_vec()
}

fn assert_clean_error(bytes: &[u8]) {
    match decode_segment(KEY, bytes) {
        Ok(_) => {}
        Err(e) => {
            assert_eq!(e.key(), KEY);
            assert!(e.to_string().contains(KEY), "{e}");
        }
    }
}

#[test]
fn truncation_at_every_length_is_an_error_naming_the_key() {
    let good = sample();
    for len in 0..good.len() {
        let e = decode_segment(KEY, &good[..len]).expect_err("truncated must fail");
        assert!(e.to_string().contains(KEY), "len {len}: {e}");
    }
}

#[test]
fn every_single_bit_flip_is_detected_or_harmless() {
    let good = sample();
    let original = decode_segment(KEY, &good).unwrap();
    for byte in 0..good.len() {
        for bit in [0u8, 3, 7] {
            let mut bad = good.clone();
            bad[byte] ^= 1 << bit;
            match decode_segment(KEY, &bad) {
                Err(e) => assert!(e.to_string().contains(KEY)),
                // A flip in a reserved field may decode; it must not change data.
                Ok(seg) => assert_eq!(seg.ids, original.ids, "byte {byte} bit {bit}"),
            }
        }
    }
}

#[test]
fn random_bytes_and_random_mutations_never_panic() {
    let good = sample();
    let mut rng = StdRng::seed_from_u64(42);
    for _ in 0..3000 {
        let len = rng.random_range(0..400);
        let junk: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        assert_clean_error(&junk);
        // Junk that starts like a segment.
        let mut framed = MAGIC.to_vec();
        framed.extend_from_slice(&junk);
        assert_clean_error(&framed);
        // A valid segment with a few random bytes overwritten.
        let mut m = good.clone();
        for _ in 0..rng.random_range(1..6) {
            let at = rng.random_range(0..m.len());
            m[at] = rng.random();
        }
        assert_clean_error(&m);
    }
}

/// Rewrites the directory so its checksum matches again: a forged object
/// whose lengths lie but whose checksums pass.
fn forge_directory(bytes: &mut [u8], edit: impl Fn(&mut [u8])) {
    let total = bytes.len();
    let count = u32::from_le_bytes(
        bytes[total - TAIL_LEN..total - TAIL_LEN + 4]
            .try_into()
            .unwrap(),
    ) as usize;
    let dir_start = total - TAIL_LEN - count * DIR_ENTRY_LEN;
    edit(&mut bytes[dir_start..total - TAIL_LEN]);
    let sum = xxh3_64(&bytes[dir_start..total - TAIL_LEN]);
    bytes[total - 16..total - 8].copy_from_slice(&sum.to_le_bytes());
}

#[test]
fn lying_lengths_are_refused_without_huge_allocations() {
    let good = sample();
    // The vectors entry (second) claims a terabyte of raw data.
    let mut bad = good.clone();
    forge_directory(&mut bad, |dir| {
        dir[DIR_ENTRY_LEN + 24..DIR_ENTRY_LEN + 32].copy_from_slice(&(1u64 << 40).to_le_bytes());
    });
    let e = decode_segment(KEY, &bad).unwrap_err().to_string();
    assert!(e.contains("claims") && e.contains(KEY), "{e}");
    // An entry pointing past the end of the object.
    let mut bad = good.clone();
    forge_directory(&mut bad, |dir| {
        dir[8..16].copy_from_slice(&(u64::MAX - 3).to_le_bytes());
    });
    let e = decode_segment(KEY, &bad).unwrap_err().to_string();
    assert!(e.contains("overruns"), "{e}");
    // A header claiming 16M records, checksum fixed up.
    let mut bad = good.clone();
    let body_len = u16::from_le_bytes([bad[10], bad[11]]) as usize;
    bad[20..28].copy_from_slice(&MAX_SEGMENT_RECORDS.to_le_bytes());
    let sum = xxh3_64(&bad[..12 + body_len]);
    bad[12 + body_len..20 + body_len].copy_from_slice(&sum.to_le_bytes());
    let e = decode_segment(KEY, &bad).unwrap_err().to_string();
    assert!(e.contains(KEY), "{e}");
}

#[test]
fn other_versions_and_foreign_objects_are_named() {
    let mut v2 = sample();
    v2[8..10].copy_from_slice(&2u16.to_le_bytes());
    let e = decode_segment(KEY, &v2).unwrap_err();
    assert!(
        matches!(e, SegmentError::UnsupportedVersion { found: 2, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("version 2") && e.to_string().contains(KEY));
    let e = decode_segment(KEY, b"{\"json\": true}")
        .unwrap_err()
        .to_string();
    assert!(e.contains("bad magic") && e.contains(KEY), "{e}");
}
