//! Helpers shared by the fuzz targets and the seed-corpus generator.
//!
//! Segments carry xxh3 checksums over the header, every section and the
//! directory, so almost every mutated input stops at the first checksum.
//! [`reseal`] recomputes them, letting a target feed the decoder inputs
//! whose *structure* is hostile but whose checksums hold: what a buggy or
//! malicious writer could store, as opposed to what bit rot produces.
//!
//! The targets that query a real in-memory index share its runtime and
//! its records ([`runtime`], [`sample_records`]).

use serde_json::json;
use shoal::record::{Prepared, Record};
use shoal::segment::{DIR_ENTRY_LEN, MAGIC, TAIL_LEN};
use xxhash_rust::xxh3::xxh3_64;

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        b.get(at..at.checked_add(2)?)?.try_into().ok()?,
    ))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        b.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        b.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}

fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// Where the header's checksum sits, if the bytes start like a segment.
fn header_sum_at(b: &[u8]) -> Option<usize> {
    if b.get(..8)? != MAGIC.as_slice() {
        return None;
    }
    let end = 12 + usize::from(u16_at(b, 10)?);
    (end + 8 <= b.len()).then_some(end)
}

/// The directory's byte range, if the tail's entry count fits the object.
fn directory(b: &[u8]) -> Option<(usize, usize)> {
    let tail = b.len().checked_sub(TAIL_LEN)?;
    let count = u32_at(b, tail)? as usize;
    let start = tail.checked_sub(count.checked_mul(DIR_ENTRY_LEN)?)?;
    Some((start, count))
}

/// Rewrites every checksum a segment carries (sections, directory,
/// header) to match the bytes, as far as the layout can be read.
pub fn reseal(b: &mut [u8]) {
    if let Some((start, count)) = directory(b) {
        for i in 0..count {
            let e = start + i * DIR_ENTRY_LEN;
            let (Some(offset), Some(len)) = (u64_at(b, e + 8), u64_at(b, e + 16)) else {
                continue;
            };
            let range = usize::try_from(offset)
                .ok()
                .zip(usize::try_from(len).ok())
                .and_then(|(o, l)| Some(o..o.checked_add(l)?))
                .filter(|r| r.end <= start);
            if let Some(r) = range {
                let sum = xxh3_64(&b[r]);
                put_u64(b, e + 32, sum);
            }
        }
        let tail = b.len() - TAIL_LEN;
        let sum = xxh3_64(&b[start..tail]);
        put_u64(b, tail + 8, sum);
    }
    if let Some(at) = header_sum_at(b) {
        let sum = xxh3_64(&b[..at]);
        put_u64(b, at, sum);
    }
}

/// Re-lays a well-formed segment with every section stored uncompressed
/// (codec 0), so that mutations land on the structure the decoder parses
/// rather than on zstd frames. Returns `None` for bytes it cannot read.
pub fn uncompressed(b: &[u8]) -> Option<Vec<u8>> {
    let header_end = header_sum_at(b)? + 8;
    let (start, count) = directory(b)?;
    let mut out = b[..header_end].to_vec();
    let mut dir = Vec::with_capacity(count * DIR_ENTRY_LEN);
    for i in 0..count {
        let e = &b[start + i * DIR_ENTRY_LEN..start + (i + 1) * DIR_ENTRY_LEN];
        let offset = u64_at(e, 8)? as usize;
        let stored = &b[offset..offset.checked_add(u64_at(e, 16)? as usize)?];
        let raw = match e[1] {
            0 => stored.to_vec(),
            1 => zstd::stream::decode_all(stored).ok()?,
            _ => return None,
        };
        dir.extend_from_slice(&[e[0], 0, 0, 0]);
        dir.extend_from_slice(&e[4..8]);
        dir.extend_from_slice(&(out.len() as u64).to_le_bytes());
        dir.extend_from_slice(&(raw.len() as u64).to_le_bytes());
        dir.extend_from_slice(&(raw.len() as u64).to_le_bytes());
        dir.extend_from_slice(&xxh3_64(&raw).to_le_bytes());
        out.extend_from_slice(&raw);
    }
    out.extend_from_slice(&dir);
    out.extend_from_slice(&(count as u32).to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&xxh3_64(&dir).to_le_bytes());
    out.extend_from_slice(&b[b.len() - 8..]);
    Some(out)
}

/// `n` deterministic records of `d` dimensions: distinct vectors, some
/// metadata, every fifth a tombstone, one id repeated (newest wins).
pub fn records(n: usize, d: usize) -> Vec<Prepared> {
    let mut x = 0x9e37_79b9_u32;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        (x % 2000) as f32 / 1000.0 - 1.0
    };
    (0..n)
        .map(|i| {
            let id = if i == n - 1 && n > 2 {
                "id-0".to_string()
            } else {
                format!("id-{i}")
            };
            if i % 5 == 4 {
                Prepared::tombstone(id)
            } else {
                Prepared {
                    id,
                    vector: (0..d).map(|_| next()).collect(),
                    metadata: format!("{{\"i\":{i},\"domain\":\"d{}\"}}", i % 3).into_bytes(),
                    tombstone: false,
                }
            }
        })
        .collect()
}

/// A single-threaded runtime for targets that drive async code per input.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// `n` 3-d records `r0..` with metadata for filters to match: `i`,
/// `domain` (`web` or `cli`) and `tags`.
pub fn sample_records(n: usize) -> Vec<Record> {
    (0..n)
        .map(|i| {
            Record::new(format!("r{i}"), vec![i as f32, 1.0, (i % 7) as f32]).with_metadata(
                json!({"i": i, "domain": if i % 2 == 0 { "web" } else { "cli" }, "tags": [i % 3]}),
            )
        })
        .collect()
}
