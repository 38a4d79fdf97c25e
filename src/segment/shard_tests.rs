//! The range-readable shard format: round trips whole and by ranges,
//! and hostile bytes are errors naming the key, never panics.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::shard::*;
use super::tests::header;
use super::*;
use crate::record::Prepared;

const KEY: &str = "index/shards/test.shd";

/// Random records in `lists` groups (some empty), with centroids.
fn sample_shard(seed: u64) -> (Vec<Vec<Prepared>>, Vec<f32>, usize, EncodedShard) {
    let mut rng = StdRng::seed_from_u64(seed);
    let d = rng.random_range(1..40);
    let lists = rng.random_range(1..6);
    let mut groups = vec![Vec::new(); lists];
    for i in 0..rng.random_range(1..120) {
        let g = rng.random_range(0..lists);
        groups[g].push(if rng.random_bool(0.1) {
            Prepared::tombstone(format!("gone-{i}"))
        } else {
            Prepared {
                id: format!("id-{i}-{}", "é".repeat(rng.random_range(0..3))),
                vector: (0..d).map(|_| rng.random_range(-1.0f32..1.0)).collect(),
                metadata: if rng.random_bool(0.3) {
                    Vec::new()
                } else {
                    format!("{{\"i\":{i}}}").into_bytes()
                },
                tombstone: false,
            }
        });
    }
    let centroids: Vec<f32> = (0..lists * d)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    let refs: Vec<&[Prepared]> = groups.iter().map(|g| g.as_slice()).collect();
    // Code blocks are opaque to the format: 20 bytes a row here.
    let codes: Vec<Vec<u8>> = groups
        .iter()
        .map(|g| (0..g.len() * 20).map(|_| rng.random()).collect())
        .collect();
    let enc = encode_shard(
        &header(d as u32, Metric::Euclidean),
        &centroids,
        &refs,
        &codes,
        3,
    );
    (groups, centroids, d, enc)
}

#[test]
fn a_shard_round_trips_whole_and_by_ranges() {
    for seed in 0..40 {
        let (groups, centroids, d, enc) = sample_shard(seed);
        assert_eq!(centroids.len(), groups.len() * d);
        let buf = &enc.bytes;
        let all: Vec<&Prepared> = groups.iter().flatten().collect();
        // Whole: the records in list order, an IVF index of the lists.
        let seg = decode_segment(KEY, buf).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        assert_eq!(seg.len(), all.len());
        for (i, r) in all.iter().enumerate() {
            assert_eq!(seg.id(i), r.id);
            assert_eq!(seg.is_tombstone(i), r.tombstone);
            assert_eq!(seg.metadata_raw(i), r.metadata.as_slice());
            if !r.tombstone {
                assert_eq!(seg.vector(i), r.vector.as_slice());
            }
        }
        // By ranges: the head region alone, then each list's parts.
        let len = buf.len() as u64;
        let region = &buf[..enc.head_bytes as usize];
        let (head, ids) = decode_head_region(KEY, region, len).unwrap();
        assert_eq!(ids.ids, seg.ids());
        assert_eq!(head.nlist(), groups.len());
        let at = |r: std::ops::Range<u64>| &buf[r.start as usize..r.end as usize];
        for (l, g) in groups.iter().enumerate() {
            let e = &head.lists[l];
            assert_eq!(e.codes.stored_len, g.len() as u64 * 20);
            head.check_codes(KEY, l, at(e.codes.range())).unwrap();
            let (offsets, bytes) = head.list_metadata(KEY, l, at(e.metadata.range())).unwrap();
            for (j, r) in g.iter().enumerate() {
                assert_eq!(
                    &bytes[offsets[j] as usize..offsets[j + 1] as usize],
                    r.metadata
                );
                // One row alone, by its own range.
                let v = head
                    .list_rows(KEY, l, j as u64, at(head.rows_range(l, j as u64, 1)))
                    .unwrap();
                if !r.tombstone {
                    assert_eq!(v, r.vector);
                }
                assert_eq!(head.list_of(e.start + j as u64), l);
            }
        }
    }
}

#[test]
fn the_prefix_alone_gives_the_head_length() {
    let (_, _, _, enc) = sample_shard(3);
    let head = prefix_head_len(KEY, &enc.bytes[..PREFIX_LEN]).unwrap();
    assert!(head > 0 && head + (PREFIX_LEN as u64) < enc.head_bytes);
    assert!(prefix_head_len(KEY, &enc.bytes[..PREFIX_LEN - 1]).is_err());
}

#[test]
fn every_single_bit_flip_is_detected_or_harmless() {
    let (_, _, _, enc) = sample_shard(5);
    let good = enc.bytes.to_vec();
    let original = decode_segment(KEY, &good).unwrap();
    for byte in 0..good.len() {
        let mut bad = good.clone();
        bad[byte] ^= 1 << (byte % 8);
        match decode_segment(KEY, &bad) {
            Err(e) => assert!(e.to_string().contains(KEY), "{e}"),
            // Reserved bytes may flip unnoticed; the data must not change.
            Ok(seg) => assert_eq!(
                seg,
                Segment {
                    stored_bytes: seg.stored_bytes,
                    ..original.clone()
                },
                "byte {byte}"
            ),
        }
    }
}

#[test]
fn truncations_and_junk_are_errors_naming_the_key() {
    let (_, _, _, enc) = sample_shard(8);
    let good = enc.bytes.to_vec();
    for len in 0..good.len() {
        let e = decode_segment(KEY, &good[..len]).expect_err("truncated must fail");
        assert!(e.to_string().contains(KEY), "len {len}: {e}");
        // A prefix read: enough when it holds the head region.
        let got = decode_head_region(KEY, &good[..len], good.len() as u64);
        assert_eq!(
            got.is_ok(),
            len as u64 >= enc.head_bytes,
            "first {len} bytes"
        );
    }
    let mut rng = StdRng::seed_from_u64(9);
    for _ in 0..2000 {
        let mut junk: Vec<u8> = (0..rng.random_range(0..300))
            .map(|_| rng.random())
            .collect();
        if junk.len() >= 8 {
            junk[..8].copy_from_slice(SHARD_MAGIC);
        }
        if let Err(e) = decode_segment(KEY, &junk) {
            assert!(e.to_string().contains(KEY));
        }
        let _ = decode_head_region(KEY, &junk, junk.len() as u64);
    }
}
